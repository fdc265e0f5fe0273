"""Wan2.2-TI2V-5B weights: the original release's files -> diffusers' ``WanTransformer3DModel`` / ``AutoencoderKLWan``.

The original release (``Wan-AI/Wan2.2-TI2V-5B``) ships the DiT as ``diffusion_pytorch_model-0000x-of-0000y.safetensors``
shards of ``wan.modules.model.WanModel`` and the VAE as ``Wan2.2_VAE.pth`` (a torch state dict of
``wan.modules.vae2_2.WanVAE_``). This module reads those files, renames their tensors to the diffusers classes with
the rule tables of ``diff4splat.models.wan_keys`` (``original_to_diffusers`` / ``diffusers_to_original``, importable
from here too) and loads them strictly: a missing, unexpected or mis-shaped tensor raises ``CheckpointMismatchError``
naming the keys and the files.

The architectures come with the package (``configs/``; nothing is fetched): ``transformer_config()`` and
``vae_config()``. The shipped numbers are those of Wan2.2 ``wan/configs/wan_ti2v_5B.py`` and ``wan/modules/vae2_2.py``,
which agree with diffusers' ``scripts/convert_wan_to_diffusers.py`` (``Wan2.2-TI2V-5B``, ``vae22_diffusers_config``).

Wan2.2-Fun-5B-Control-Camera (VideoX-Fun) ships its DiT in this same original layout with two differences: the patch
embedding takes 100 input channels (``transformer_config("fun_5b_control_camera")``) and ``control_adapter.*`` tensors
are added; ``diff4splat.models.fun_camera`` splits those off and loads the rest through
``transformer_from_original_state``.

CLI (writes a folder that ``from_pretrained`` loads; built in a temporary folder and renamed when complete)::

    python -m diff4splat.models.wan_convert --kind transformer --src <Wan2.2-TI2V-5B dir or shards> --out <dir>
    python -m diff4splat.models.wan_convert --kind vae --src <Wan2.2-TI2V-5B>/Wan2.2_VAE.pth --out <dir>
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from diff4splat.files import atomic_dir
from diff4splat.models.wan_keys import (
    RULES,
    CheckpointMismatchError,
    Kind,
    Rule,
    _listing,
    _rename,
    diffusers_to_original,
    original_to_diffusers,
)

if TYPE_CHECKING:
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

PathLike = str | Path

CONFIG_DIR = Path(__file__).with_name("configs")
SHARD_GLOB = "diffusion_pytorch_model*.safetensors"
# Containers a .pth state dict may be nested under (training checkpoints, EMA exports).
_NEST_KEYS = ("state_dict", "model", "module", "ema", "model_ema")


# ----------------------------------------------------------------------------------------------------------------------
# Configs shipped with the package


def transformer_config(name: str = "ti2v_5b") -> dict:
    """The diffusers ``WanTransformer3DModel`` config of a Wan2.2 model (constructor keyword arguments)."""
    path = CONFIG_DIR / f"wan2.2_{name}_transformer.json"
    if not path.is_file():
        known = sorted(
            p.name[len("wan2.2_") : -len("_transformer.json")] for p in CONFIG_DIR.glob("*_transformer.json")
        )
        raise ValueError(f"unknown Wan transformer config {name!r}; shipped: {known}")
    return _read_config(path)


def vae_config() -> dict:
    """The diffusers ``AutoencoderKLWan`` config of the Wan2.2 VAE (48 latent channels, 4x16x16 compression)."""
    return _read_config(CONFIG_DIR / "wan2.2_vae.json")


def _read_config(path: Path) -> dict:
    return {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}


def build_transformer(
    config: Mapping | None = None, device: torch.device | str = "meta", dtype: torch.dtype = torch.bfloat16
) -> WanTransformer3DModel:
    """A ``WanTransformer3DModel`` of ``config`` (default: the shipped TI2V-5B one), on ``device`` (default meta: no
    memory, for inspection or parameter counts) with randomly initialised weights elsewhere."""
    from diffusers import WanTransformer3DModel

    with torch.device(device):
        model = WanTransformer3DModel(**_constructor_kwargs(config or transformer_config()))
    return _cast(model, dtype)


def build_vae(
    config: Mapping | None = None, device: torch.device | str = "meta", dtype: torch.dtype = torch.float32
) -> AutoencoderKLWan:
    """An ``AutoencoderKLWan`` of ``config`` (default: the shipped Wan2.2 VAE), like ``build_transformer``."""
    from diffusers import AutoencoderKLWan

    with torch.device(device):
        model = AutoencoderKLWan(**_constructor_kwargs(config or vae_config()))
    return _cast(model, dtype)


def _constructor_kwargs(config: Mapping) -> dict:
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


def _target_dtype(model: nn.Module, name: str, dtype: torch.dtype) -> torch.dtype:
    """As diffusers' ``from_pretrained(torch_dtype=...)``: modules in ``_keep_in_fp32_modules`` stay in float32."""
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    return torch.float32 if any(m in name.split(".") for m in keep) else dtype


def _cast(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    for name, param in model.named_parameters():
        param.data = param.data.to(_target_dtype(model, name, dtype))
    return model


# ----------------------------------------------------------------------------------------------------------------------
# Reading original files and loading models


def original_transformer_files(paths: PathLike | Sequence[PathLike]) -> list[Path]:
    """The safetensors shards named by ``paths``: a folder (its ``diffusion_pytorch_model*.safetensors``) or files."""
    items = [paths] if isinstance(paths, str | Path) else list(paths)
    files: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            shards = sorted(item.glob(SHARD_GLOB))
            if not shards:
                raise FileNotFoundError(f"no {SHARD_GLOB} in {item}")
            files += shards
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"Wan transformer weights: {item} does not exist")
    return files


def _open_safetensors(file: Path) -> Any:
    """``safetensors.safe_open`` of ``file`` (torch, CPU); an unreadable file is an error naming it."""
    from safetensors import safe_open

    try:
        return safe_open(str(file), framework="pt", device="cpu")
    except Exception as e:  # noqa: BLE001 - SafetensorError / OSError: an unreadable file, named
        raise CheckpointMismatchError(f"{file}: not a readable .safetensors file ({type(e).__name__}: {e})") from e


def read_safetensors(files: Sequence[Path], dtype: torch.dtype | None = None) -> dict[str, Tensor]:
    """All tensors of ``files`` in one dict (optionally cast while reading); a key in two files is an error."""
    state_dict: dict[str, Tensor] = {}
    where: dict[str, Path] = {}
    for file in files:
        with _open_safetensors(file) as f:
            for key in f.keys():
                if key in state_dict:
                    raise CheckpointMismatchError(f"{key!r} is in both {where[key]} and {file}")
                tensor = f.get_tensor(key)
                state_dict[key] = tensor if dtype is None or not tensor.is_floating_point() else tensor.to(dtype)
                where[key] = file
    return state_dict


def read_safetensors_shapes(files: Sequence[Path]) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in ``files``, from the safetensors headers only (nothing is loaded)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        with _open_safetensors(file) as f:
            for key in f.keys():
                shapes[key] = tuple(f.get_slice(key).get_shape())
    return shapes


def read_original_vae(path: PathLike) -> dict[str, Tensor]:
    """The tensors of ``Wan2.2_VAE.pth`` (``torch.load(weights_only=True)``, unnested from ``state_dict``/``model``/...)
    or of a ``.safetensors`` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Wan VAE weights: {path} does not exist")
    if path.suffix == ".safetensors":
        return read_safetensors([path])
    from diff4splat.weights import load_torch_file

    obj = load_torch_file(path, "Wan VAE weights")
    while isinstance(obj, Mapping) and not any(isinstance(v, Tensor) for v in obj.values()):
        inner = next((obj[k] for k in _NEST_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            raise CheckpointMismatchError(f"{path}: no state dict found (top-level keys: {_listing(list(obj))})")
        obj = inner
    if not isinstance(obj, Mapping):
        raise CheckpointMismatchError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return {k: v for k, v in obj.items() if isinstance(v, Tensor)}


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Create modules with their parameters on the meta device (no memory, no init cost) but real buffers: the
    non-persistent ones (e.g. the transformer's RoPE tables) are not in any checkpoint and must be computed."""
    register = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def _load_into(
    model_cls: type, config: Mapping, original: Mapping[str, Tensor], kind: Kind, dtype: torch.dtype, source: str
) -> nn.Module:
    """Build ``model_cls(**config)`` without initialising it and fill it from an original-named state dict."""
    with _parameters_on_meta():
        model = model_cls(**_constructor_kwargs(config))
    converted, origin, unexpected = _rename(original, kind, "original", "diffusers")
    expected = model.state_dict()
    missing = [k for k in expected if k not in converted]
    unexpected += [origin[k] for k in converted if k not in expected]
    shapes = [
        f"{origin[k]} {tuple(v.shape)} (model {k} {tuple(expected[k].shape)})"
        for k, v in converted.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if missing or unexpected or shapes:
        lines = [f"Wan2.2 {kind} checkpoint {source} does not match the model config:"]
        if missing:
            _, to_diffusers, _ = _rename(dict.fromkeys(expected), kind, "diffusers", "original")
            to_original = {d: o for o, d in to_diffusers.items()}
            lines.append(f"  missing ({len(missing)}): {_listing([to_original.get(k, k) for k in missing])}")
        if unexpected:
            lines.append(f"  unexpected ({len(unexpected)}): {_listing(unexpected)}")
        if shapes:
            lines.append(f"  wrong shape ({len(shapes)}): {_listing(shapes)}")
        raise CheckpointMismatchError("\n".join(lines))
    for key, tensor in converted.items():
        target = _target_dtype(model, key, dtype)
        if tensor.is_floating_point() and tensor.dtype != target:
            converted[key] = tensor.to(target)
    model.load_state_dict(converted, strict=True, assign=True)
    return model.eval()


def load_original_transformer(
    paths: PathLike | Sequence[PathLike], config: Mapping | None = None, dtype: torch.dtype = torch.bfloat16
) -> WanTransformer3DModel:
    """A ``WanTransformer3DModel`` from the original release's safetensors shards (a folder or a list of files);
    ``config`` defaults to the shipped TI2V-5B one. A key mismatch raises ``CheckpointMismatchError`` naming the keys
    (original names) and the files."""
    from diffusers import WanTransformer3DModel

    files = original_transformer_files(paths)
    source = ", ".join(map(str, files))
    return _load_into(
        WanTransformer3DModel, config or transformer_config(), read_safetensors(files), "transformer", dtype, source
    )


def transformer_from_original_state(
    state_dict: Mapping[str, Tensor],
    config: Mapping | None = None,
    dtype: torch.dtype = torch.bfloat16,
    source: str = "state dict",
) -> WanTransformer3DModel:
    """``load_original_transformer`` for tensors already in memory (original names), e.g. a release whose file also
    holds other modules' tensors. Meta tensors give a model on the meta device."""
    from diffusers import WanTransformer3DModel

    return _load_into(WanTransformer3DModel, config or transformer_config(), state_dict, "transformer", dtype, source)


def load_original_vae(
    path: PathLike, config: Mapping | None = None, dtype: torch.dtype = torch.float32
) -> AutoencoderKLWan:
    """An ``AutoencoderKLWan`` from the original ``Wan2.2_VAE.pth``; ``config`` defaults to the shipped Wan2.2 VAE."""
    from diffusers import AutoencoderKLWan

    return _load_into(AutoencoderKLWan, config or vae_config(), read_original_vae(path), "vae", dtype, str(path))


# ----------------------------------------------------------------------------------------------------------------------
# CLI

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def convert(
    kind: Kind,
    src: PathLike | Sequence[PathLike],
    out: PathLike,
    config: Mapping | None = None,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
    max_shard_size: str = "5GB",
) -> Path:
    """Write a diffusers folder (``config.json`` + safetensors) at ``out``: built in a temporary sibling folder and
    renamed into place only when complete, so ``out`` is never half-written."""
    out = Path(out)
    occupied = any(out.iterdir()) if out.is_dir() else out.exists()
    if occupied and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (pass --overwrite to replace it)")
    foreign = sorted(p.name for p in out.iterdir() if not _written_by_save_pretrained(p)) if out.is_dir() else []
    if occupied and (not out.is_dir() or foreign):
        raise FileExistsError(
            f"{out}: not replaced: it holds {', '.join(foreign[:5]) or 'a file'}, which is not a diffusers model "
            "folder's (config.json, *.safetensors, *.safetensors.index.json); --overwrite replaces only an earlier "
            "conversion (move those files or choose another --out)"
        )
    if kind == "transformer":
        model = load_original_transformer(src, config, dtype or torch.bfloat16)
    elif kind == "vae":
        srcs = [src] if isinstance(src, str | Path) else list(src)
        if len(srcs) != 1:
            raise ValueError(f"--kind vae takes one file, got {len(srcs)}")
        model = load_original_vae(srcs[0], config, dtype or torch.float32)
    else:
        raise ValueError(f"kind must be 'transformer' or 'vae', got {kind!r}")
    with atomic_dir(out) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True, max_shard_size=max_shard_size)
    return out


def _written_by_save_pretrained(path: Path) -> bool:
    """Whether ``path`` is a file ``save_pretrained(safe_serialization=True)`` writes."""
    name = path.name
    return path.is_file() and (
        name == "config.json" or name.endswith(".safetensors") or name.endswith(".safetensors.index.json")
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m diff4splat.models.wan_convert",
        description="Convert original Wan2.2-TI2V-5B weights (DiT safetensors shards or Wan2.2_VAE.pth) to a diffusers folder.",
    )
    parser.add_argument("--kind", choices=["transformer", "vae"], required=True)
    parser.add_argument("--src", nargs="+", required=True, help="transformer: release folder or shard files; vae: .pth")
    parser.add_argument("--out", required=True, help="diffusers model folder to write (config.json + safetensors)")
    parser.add_argument(
        "--dtype", choices=sorted(_DTYPES), default=None, help="storage dtype (default: bf16 transformer, fp32 VAE)"
    )
    parser.add_argument("--config", default=None, help="a diffusers config.json to use instead of the shipped one")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--max-shard-size", default="5GB")
    args = parser.parse_args(argv)
    try:
        config = json.loads(Path(args.config).read_text()) if args.config else None
        out = convert(
            args.kind, args.src, args.out, config, _DTYPES.get(args.dtype), args.overwrite, args.max_shard_size
        )
    except (CheckpointMismatchError, FileNotFoundError, FileExistsError, ValueError) as err:  # bad input or usage
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


__all__ = [  # RULES, Rule, Kind, CheckpointMismatchError and the two renames live in wan_keys
    "CONFIG_DIR",
    "RULES",
    "SHARD_GLOB",
    "CheckpointMismatchError",
    "Kind",
    "PathLike",
    "Rule",
    "build_transformer",
    "build_vae",
    "convert",
    "diffusers_to_original",
    "load_original_transformer",
    "load_original_vae",
    "main",
    "original_to_diffusers",
    "original_transformer_files",
    "read_original_vae",
    "read_safetensors",
    "read_safetensors_shapes",
    "transformer_config",
    "transformer_from_original_state",
    "vae_config",
]


if __name__ == "__main__":
    sys.exit(main())
