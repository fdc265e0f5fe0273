"""Released few-step (distilled) Wan2.2-TI2V-5B transformers in the diffusers layout, as the base model of generation.

FastVideo's ``FastWan2.2-TI2V-5B-FullAttn-Diffusers`` (DMD-distilled from Wan2.2-TI2V-5B-Diffusers, full attention,
3 steps, no CFG) is a diffusers pipeline folder::

    model_index.json            {"_class_name": "WanDMDPipeline", ...}: a distilled (DMD) pipeline
    transformer/config.json     WanTransformer3DModel with the TI2V-5B configuration (48 latent channels, 30 blocks)
    transformer/diffusion_pytorch_model-0000k-of-0000n.safetensors (+ .safetensors.index.json)
    vae/ text_encoder/ tokenizer/ scheduler/     as in Wan2.2-TI2V-5B-Diffusers

The transformer keeps diffusers' ``WanTransformer3DModel`` key names, so it loads as ``models.camera_wan.init=pretrained
models.camera_wan.pretrained_path=<folder>`` (`diff4splat.models.camera_wan.build_transformer`), strictly: every
tensor the architecture has, with its shape, and nothing else (`check_transformer_folder`, from the safetensors
headers against the model built on the meta device). Sampling uses the student's schedule, ``sampling.mode=distilled
sampling.steps=3`` (`diff4splat.sampling`): timesteps [1000, 757, 522] (FastVideo's ``FastWan2_2_TI2V_5B_Config.
dmd_denoising_steps``, read as sigmas t / 1000), x̂₀ re-noised with fresh noise between steps, one branch (no CFG).
`release_timesteps` tells a distilled release from a many-step one by ``model_index.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from diff4splat.weights import WeightsError

# model_index.json "_class_name" of the released distilled pipelines -> the timesteps their students were trained for
DISTILLED_PIPELINES: dict[str, list[float]] = {"WanDMDPipeline": [1000.0, 757.0, 522.0]}
TRANSFORMER_CLASS = "WanTransformer3DModel"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = WEIGHTS_NAME + ".index.json"


def transformer_folder(path: str | Path) -> Path:
    """The transformer folder of a diffusers pipeline root (``<root>/transformer``) or the folder itself."""
    path = Path(path)
    return path / "transformer" if (path / "transformer" / "config.json").is_file() else path


def release_timesteps(path: str | Path) -> list[float] | None:
    """The student's timesteps when ``path`` (a pipeline root or its ``transformer/``) is a released distilled
    pipeline (``model_index.json``'s ``_class_name`` in `DISTILLED_PIPELINES`); None otherwise."""
    path = Path(path)
    for root in (path, path.parent):
        index = root / "model_index.json"
        if index.is_file():
            try:
                name = json.loads(index.read_text()).get("_class_name")
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
                raise WeightsError(f"{index}: not a JSON object ({e})") from e
            return DISTILLED_PIPELINES.get(name)
    return None


def transformer_config(folder: Path) -> dict:
    """The constructor arguments in ``folder/config.json`` (a ``WanTransformer3DModel``'s)."""
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WeightsError(f"{path}: not a readable diffusers config ({e})") from e
    if not isinstance(config, dict) or config.get("_class_name", TRANSFORMER_CLASS) != TRANSFORMER_CLASS:
        found = config.get("_class_name") if isinstance(config, dict) else type(config).__name__
        raise WeightsError(f"{path}: _class_name is {found!r}; expected {TRANSFORMER_CLASS}")
    return {k: v for k, v in config.items() if not k.startswith("_")}


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a diffusers model folder: the shards its index names, or the single file."""
    index = folder / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise WeightsError(f"{index}: no weight_map ({e})") from e
        files = [folder / name for name in sorted(set(weight_map.values()))]
    else:
        files = [folder / WEIGHTS_NAME]
    absent = [f.name for f in files if not f.is_file()]
    if absent:
        raise WeightsError(f"{folder}: weight files {absent} are missing")
    return files


def expected_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor a ``WanTransformer3DModel`` of ``config`` saves, built on the meta device (as
    ``from_pretrained`` reads a config: keys this diffusers does not know are left out)."""
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        model = WanTransformer3DModel.from_config(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_transformer_folder(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Check a diffusers transformer folder (or pipeline root) strictly: its files hold exactly the tensors of
    ``WanTransformer3DModel`` with its ``config.json``, each with its shape (read from the safetensors headers; nothing
    is loaded). Returns the manifest; a mismatch is a `WeightsError` naming the folder and the tensors."""
    from diff4splat.models.wan_convert import CheckpointMismatchError, read_safetensors_shapes

    folder = transformer_folder(path)
    expected = expected_shapes(transformer_config(folder))
    try:
        found = read_safetensors_shapes(weight_files(folder))
    except CheckpointMismatchError as e:
        raise WeightsError(str(e)) from e
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = sorted(f"{k} {found[k]} (model {expected[k]})" for k in expected if k in found and found[k] != expected[k])
    parts = [
        f"{what} {', '.join(keys[:8])}" + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes))
        if keys
    ]
    if parts:
        raise WeightsError(f"{folder}: not a {TRANSFORMER_CLASS} of its config.json: " + "; ".join(parts))
    return found


def num_parameters(manifest: dict[str, tuple[int, ...]]) -> int:
    return sum(int(torch.Size(shape).numel()) for shape in manifest.values())
