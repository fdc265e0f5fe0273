"""Training checkpoints to single-device weights: ``python -m diff4splat.checkpoints consolidate CKPT OUT``.

    python -m diff4splat.checkpoints consolidate outputs/camctrl_5b/runs/<run>/checkpoints/last.ckpt camctrl.safetensors \\
        [--raw] [--camera-weights camera.safetensors]

``CKPT`` is a Lightning checkpoint: a sharded folder written under ``trainer=fsdp2`` (ModelParallelStrategy's
distributed checkpoint: ``.metadata``, ``__<rank>_0.distcp`` and ``meta.pt``) or ``trainer=fsdp``, or a plain
``.ckpt`` file. ``OUT`` gets the trained module's weights in the format of the ``.safetensors`` exports written
next to every checkpoint (`diff4splat.callbacks.checkpoint`): keys without the system's ``export_prefix``, the EMA
weights when the run kept an EMA (``--raw``: the trained weights themselves), and the system, step and
hyper-parameters as metadata. The single-device loaders read it: ``pipelines.reconstruction.load_lrdm`` (LRDM),
``LatentAligner.load`` (alignment), and `load_camera_wan` (a ``CameraWan`` built from the stored model config). ``--camera-weights`` also writes the camera branch (and LoRA) as ``CameraWan.save_camera_weights``
does, the file generation reads as ``models.camera_wan.camera_weights``.

``python -m diff4splat.checkpoints convert SRC OUT [--static]`` turns a released reconstructor checkpoint into the
same format: MoVieS's ``movies_ckpt.safetensors`` (loaded strictly) or ``facebook/VGGT-1B``'s ``model.pt`` /
``model.safetensors`` (MoVieS's initialisation: the parts MoVieS adds are new; ``--static``: without the motion heads),
as an LRDM with encoder ``vggt`` whose config goes in the metadata, so every CLI takes ``OUT`` as ``--weights``.

No process group is needed: the shards are read with ``torch.distributed.checkpoint`` in single-process mode, and
everything is loaded with ``weights_only`` (tensors and plain containers only).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

META_FILE = "meta.pt"  # Lightning's name for the non-tensor part of a distributed checkpoint


class CheckpointError(ValueError):
    """A checkpoint that cannot be consolidated: names the file and what is wrong."""


def _load_sharded_model_state(folder: Path) -> dict[str, Tensor]:
    """The ``state_dict`` entries of a distributed checkpoint folder, as full CPU tensors."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    try:
        metadata = dcp.FileSystemReader(str(folder)).read_metadata()
    except Exception as e:  # noqa: BLE001 - any unreadable metadata is the same error for the user
        raise CheckpointError(f"{folder}: not a readable distributed checkpoint (.metadata: {e})") from e
    prefix = "state_dict."
    template: dict[str, Tensor] = {}
    for key, md in metadata.state_dict_metadata.items():
        if key.startswith(prefix) and isinstance(md, TensorStorageMetadata):
            template[key[len(prefix) :]] = torch.empty(md.size, dtype=md.properties.dtype)
    if not template:
        raise CheckpointError(f"{folder}: the distributed checkpoint has no 'state_dict' tensors")
    state = {"state_dict": template}
    dcp.load(state, checkpoint_id=str(folder), no_dist=True)
    return state["state_dict"]


def read_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(model state dict, the rest of the checkpoint)`` of a Lightning checkpoint file or distributed folder."""
    path = Path(path)
    if path.is_dir():
        meta_path = path / META_FILE
        if not meta_path.is_file():
            raise CheckpointError(f"{path}: no {META_FILE}; expected a Lightning distributed checkpoint folder")
        rest = torch.load(meta_path, map_location="cpu", weights_only=True)
        if (path / ".metadata").is_file():
            state = _load_sharded_model_state(path)
        elif isinstance(rest.get("state_dict"), dict):
            state = rest.pop("state_dict")
        else:
            raise CheckpointError(f"{path}: neither a .metadata index of shards nor a 'state_dict' in {META_FILE}")
        return state, rest
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: nothing at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path}: not a loadable Lightning checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(f"{path}: no 'state_dict' mapping; expected a Lightning checkpoint (.ckpt)")
    state = ckpt.pop("state_dict")
    return state, ckpt


def _ema_shadow(rest: dict[str, Any]) -> dict[str, Tensor] | None:
    from diff4splat.callbacks.ema import state_dict_key

    for key, value in (rest.get("callbacks") or {}).items():
        if str(key).startswith("EMA") and isinstance(value, dict) and isinstance(value.get("shadow"), dict):
            shadow = {state_dict_key(k): v for k, v in value["shadow"].items()}
            if shadow and all(isinstance(v, Tensor) and v.numel() > 0 for v in shadow.values()):
                return shadow
    return None


def consolidate(path: str | Path, use_ema: bool = True) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The exported module's full weights and export metadata (the `CheckpointWithExport` sidecar format)."""
    state, rest = read_checkpoint(path)
    info = rest.get("diff4splat") or {}
    prefix = info.get("export_prefix", "")
    shadow = _ema_shadow(rest) if use_ema else None
    if shadow is not None:
        state = {k: shadow[k].to(v.dtype) if k in shadow else v for k, v in state.items()}
    if prefix:
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not state:
        raise CheckpointError(f"{path}: no weights under the export prefix {prefix!r}")
    hparams = rest.get("hyper_parameters") or {}
    metadata = {
        "format": "diff4splat-weights",
        "system": str(info.get("system", "")),
        "export_prefix": prefix,
        "global_step": str(rest.get("global_step", "")),
        "ema": str(shadow is not None).lower(),
        "hparams": json.dumps(dict(hparams), default=str),
        "source": str(Path(path).name),
    }
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}, metadata


def _camera_wan_config(metadata: dict[str, str]) -> Any:
    from diff4splat.configs import to_dataclass
    from diff4splat.models.camera_wan import CameraWanConfig

    model_cfg = json.loads(metadata.get("hparams") or "{}").get("model")
    if not isinstance(model_cfg, dict) or "arch" not in model_cfg:
        raise CheckpointError("CameraWan weights: the checkpoint's hyper-parameters hold no CameraWan 'model' config")
    return to_dataclass(CameraWanConfig, {**model_cfg, "init": "random", "camera_weights": None}, "checkpoint:model")


def load_camera_wan(state: dict[str, Tensor], metadata: dict[str, str], device: str | torch.device = "cpu") -> Any:
    """A single-device ``CameraWan`` (architecture from the stored config) holding ``state`` (strict)."""
    from diff4splat.models.camera_wan import CameraWan

    model = CameraWan.from_config(_camera_wan_config(metadata), device=device)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"CameraWan weights do not fit the stored config: {e}") from e
    return model


def write_camera_weights(state: dict[str, Tensor], metadata: dict[str, str], out: str | Path) -> Path:
    """The camera branch (and LoRA) of ``state`` as ``CameraWan.save_camera_weights`` writes it (the model is built
    on the meta device, so no full-size copy is allocated)."""
    from diff4splat.models.camera_wan import CameraWan

    with torch.device("meta"):
        model = CameraWan.from_config(_camera_wan_config(metadata), device="meta")
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise CheckpointError(f"CameraWan weights do not fit the stored config: {e}") from e
    return model.save_camera_weights(out, extra={"global_step": metadata.get("global_step", "")})


def convert(path: str | Path, dynamic: bool = True) -> tuple[dict[str, Tensor], dict[str, str]]:
    """A released VGGT / MoVieS checkpoint as our LRDM export (`diff4splat.models.released`): the ``vggt`` LRDM's
    weights and the export metadata with its config."""
    from diff4splat.configs import to_plain
    from diff4splat.models.released import load_released

    model = load_released(path, dynamic=dynamic)
    metadata = {
        "format": "diff4splat-weights",
        "system": "reconstruction",
        "export_prefix": "model.",
        "global_step": "",
        "ema": "false",
        "hparams": json.dumps({"model": to_plain(model.config)}),
        "source": str(Path(path).name),
    }
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()}, metadata


def save(state: dict[str, Tensor], metadata: dict[str, str], out: str | Path) -> Path:
    from diff4splat.weights import save_safetensors

    return save_safetensors(state, out, metadata)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diff4splat.checkpoints", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("consolidate", help="a (sharded) training checkpoint -> one .safetensors of the model weights")
    c.add_argument("checkpoint", type=Path, help="a .ckpt file or a distributed checkpoint folder (last.ckpt/)")
    c.add_argument("out", type=Path, help="the .safetensors to write")
    c.add_argument("--raw", action="store_true", help="the trained weights, not their EMA")
    c.add_argument(
        "--camera-weights",
        type=Path,
        default=None,
        help="also write CameraWan camera-branch (+LoRA) weights here (diffusion checkpoints)",
    )
    v = sub.add_parser("convert", help="a released VGGT-1B / MoVieS checkpoint -> our LRDM .safetensors (vggt)")
    v.add_argument("checkpoint", type=Path, help="movies_ckpt.safetensors, or VGGT-1B's model.pt / model.safetensors")
    v.add_argument("out", type=Path, help="the .safetensors to write")
    v.add_argument("--static", action="store_true", help="VGGT-1B: MoVieS's static model (no motion heads)")
    args = parser.parse_args(argv)
    if args.out.suffix != ".safetensors":
        print(f"error: out: {args.out} should end in .safetensors", file=sys.stderr)
        return 2
    if args.command == "convert":
        from diff4splat.weights import WeightsError

        try:
            state, metadata = convert(args.checkpoint, dynamic=not args.static)
            save(state, metadata, args.out)
        except (WeightsError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"wrote {args.out} ({len(state)} tensors, LRDM encoder vggt, from {args.checkpoint.name})")
        return 0
    try:
        state, metadata = consolidate(args.checkpoint, use_ema=not args.raw)
        if args.camera_weights is not None:
            write_camera_weights(state, metadata, args.camera_weights)
        save(state, metadata, args.out)
    except (CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({len(state)} tensors, step {metadata['global_step']}, ema={metadata['ema']})")
    if args.camera_weights is not None:
        print(f"wrote {args.camera_weights}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
