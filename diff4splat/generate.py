"""Generate a 4D scene (deformable 3D Gaussians) from one image, a camera trajectory and a prompt.

    python -m diff4splat.generate image=photo.jpg camera=orbit prompt="a boat on a lake" output_dir=out/
    python -m diff4splat.generate image=photo.jpg camera=cams.txt trajectory.num_frames=49 output_dir=out/
    python -m diff4splat.generate tiny=true image=photo.jpg output_dir=out/       # tiny random weights, any machine
    python -m diff4splat.generate batch=jobs.csv output_dir=out/                   # one folder per row

Hydra ``key=value`` overrides of ``conf/generate.yaml`` (model paths under ``models.``, low-memory options under
``low_memory.``). Writes ``scene.safetensors``, ``ply/frame_XXXX.ply``, ``video.mp4``, ``render.mp4``, ``novel.mp4``,
``depth.mp4``, ``trajectory.png`` and ``meta.json`` (see ``diff4splat.pipelines.jobs``). Bad input prints one
``error:`` line naming the file and field and exits with code 2, leaving nothing behind.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from diff4splat.cli import run_cli
from diff4splat.configs import to_dataclass
from diff4splat.pipelines.jobs import GenerateConfig, generate


def to_config(cfg: DictConfig) -> GenerateConfig:
    """The typed config of a composed ``conf/generate.yaml`` (Hydra's and the paths group's own keys left out)."""
    plain = {
        k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
        for k in cfg
        if k not in ("hydra", "paths")
    }
    return to_dataclass(GenerateConfig, plain, "generate")


def run(cfg: DictConfig) -> Path:
    return generate(to_config(cfg))


@hydra.main(version_base="1.3", config_path="../conf", config_name="generate.yaml")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: see the module docstring."""
    code = run_cli(run, cfg)
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
