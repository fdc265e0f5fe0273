"""Exporting a distilled student (`diff4splat.systems.distill`) for generation: its ``student.`` weights, from a
checkpoint or a training export, as a diffusers transformer folder (LoRA merged) plus camera weights, the layout
generation loads as ``models.camera_wan.pretrained_path`` / ``camera_weights``. The command line is
``python -m diff4splat.systems.distill export <weights> <out>``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
from pathlib import Path

STUDENT_PREFIX = "student."  # the distillation system's export prefix (`DistillationSystem.export_prefix`)


def export_student(weights: str | Path, out: str | Path) -> Path:
    """A distillation checkpoint or export (``student.`` weights) as ``out/transformer`` (a diffusers
    ``WanTransformer3DModel`` folder, LoRA merged) and ``out/camera.safetensors`` (the camera branch): generation's
    ``models.camera_wan.pretrained_path=out models.camera_wan.camera_weights=out/camera.safetensors``."""
    from diff4splat.checkpoints import consolidate, load_camera_wan
    from diff4splat.weights import load_safetensors

    weights = Path(weights)
    if weights.suffix == ".safetensors":
        state, meta = load_safetensors(weights, "distilled student")
    else:
        state, meta = consolidate(weights)
    if meta.get("export_prefix") != STUDENT_PREFIX:
        raise ValueError(
            f"{weights}: not a distillation export (prefix {meta.get('export_prefix')!r}, want 'student.')"
        )
    model = load_camera_wan(state, meta)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    if cfg.lora_rank > 0:
        model.transformer.fuse_lora(lora_scale=1.0)
        model.transformer.unload_lora()
    model.transformer.save_pretrained(str(out / "transformer"), safe_serialization=True)
    plain = copy.deepcopy(model)
    plain.config = dataclasses.replace(cfg, lora_rank=0, init="pretrained", pretrained_path=str(out))
    return plain.save_camera_weights(out / "camera.safetensors", extra={"distilled_from": str(weights)})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m diff4splat.systems.distill", description=export_student.__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="a distilled student as a diffusers transformer folder + camera weights")
    e.add_argument("weights", help="a distillation checkpoint (.ckpt, sharded folder) or its .safetensors export")
    e.add_argument("out", help="output folder")
    args = p.parse_args(argv)
    try:
        path = export_student(args.weights, args.out)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"transformer": str(Path(args.out) / "transformer"), "camera_weights": str(path)}))
    return 0
