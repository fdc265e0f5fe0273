"""Generate a 4D scene (deformable 3D Gaussians) from one image, a camera trajectory and a prompt.

    python -m diff4splat.generate image=photo.jpg camera=orbit prompt="a boat on a lake" output_dir=out/
    python -m diff4splat.generate image=photo.jpg camera=cams.txt trajectory.num_frames=49 output_dir=out/
    python -m diff4splat.generate tiny=true image=photo.jpg output_dir=out/       # tiny random weights, any machine
    python -m diff4splat.generate batch=jobs.csv output_dir=out/                   # one folder per row
    python -m diff4splat.generate layout=public image=photo.jpg camera=cams.txt output_dir=out/  # released weights

Hydra ``key=value`` overrides of ``conf/generate.yaml`` (model paths under ``models.``, low-memory options under
``low_memory.``; ``--help`` lists them all). Writes ``scene.safetensors``, ``ply/frame_XXXX.ply``, ``video.mp4``,
``render.mp4``, ``novel.mp4``, ``depth.mp4``, ``trajectory.png`` and ``meta.json`` (see ``diff4splat.pipelines.jobs``).
Bad input (a misspelt key included) prints one ``error:`` line naming the file and field and exits with code 2,
leaving nothing behind; a failure of the machine exits with 1.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from diff4splat.cli import run_cli
from diff4splat.configs import to_dataclass
from diff4splat.pipelines.jobs import GenerateConfig, generate

CONF = Path(__file__).resolve().parents[1] / "conf"
HELP_FLAGS = ("-h", "--help")
# options that conf/generate.yaml does not set (so has no comment for)
EXTRA_DOCS = {
    "sampling.seed": "set from seed= (each batch row's own seed), not read from here",
    "layout": "ours | public: which weights the models.* paths name (public: released checkpoints only, "
    "conf/layout/public.yaml; README 'Pretrained weights')",
}
HYDRA_FLAGS = ("--hydra-help", "--info", "--shell-completion", "--cfg", "-c", "--resolve", "--package", "-p")


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


def _yaml_docs(path: Path) -> dict[str, str]:
    """The comment of each dotted key in a YAML file written as ``key: value  # comment`` (indented two spaces per
    level; comment-only lines under a key continue its comment)."""
    docs: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    last = None
    for line in path.read_text().splitlines():
        m = re.match(r"^( *)([A-Za-z_][\w]*):(.*)$", line)
        if m:
            indent, key, rest = len(m[1]), m[2], m[3]
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, key))
            last = ".".join(k for _, k in stack)
            docs[last] = rest.split("#", 1)[1].strip() if "#" in rest else ""
        elif last and line.strip().startswith("#") and line.startswith(" "):
            docs[last] = f"{docs[last]} {line.strip()[1:].strip()}".strip()
        elif line and not line.startswith(" "):
            last = None
    return docs


def _leaves(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted name, default) of every field of a (nested) dataclass instance."""
    rows = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value) and name != "models.camera_wan":
            rows += _leaves(value, f"{name}.")
        else:
            rows.append((name, value))
    return rows


def options_help() -> str:
    """``--help``: the usage examples and every option of `GenerateConfig` with its default (as
    ``conf/generate.yaml`` sets it) and meaning (that file's comment)."""
    docs = _yaml_docs(CONF / "generate.yaml")
    raw = OmegaConf.to_container(OmegaConf.load(CONF / "generate.yaml"), resolve=False)  # ${...} shown as written

    def yaml_value(name: str) -> Any:
        node: Any = raw
        for part in name.split("."):
            if not isinstance(node, dict) or part not in node:
                return "__absent__"
            node = node[part]
        return node

    lines = [
        "usage: python -m diff4splat.generate [key=value ...]",
        "",
        (__doc__ or "").strip(),
        "",
        "Options (key=default: meaning):",
    ]
    for name, default in _leaves(GenerateConfig()):
        if name == "models.camera_wan":
            value = yaml_value("models.camera_wan.camera_weights")
            lines.append(f"  models.camera_wan.camera_weights={value}")
            lines.append(f"      {docs.get('models.camera_wan.camera_weights', '')}")
            lines.append("  models.camera_wan.<field>: the CameraWan architecture (conf/model/camctrl_5b.yaml)")
            lines.append("  models.camera_wan=<path>: the Wan2.2-Fun camera release folder, or our camera weights")
            continue
        value = yaml_value(name)
        shown = default if value == "__absent__" else value
        shown = "null" if shown is None else str(shown).replace("True", "true").replace("False", "false")
        lines.append(f"  {name}={shown}")
        lines.append(f"      {docs.get(name) or EXTRA_DOCS.get(name, '')}")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path="../conf", config_name="generate.yaml")
def _hydra_main(cfg: DictConfig) -> None:
    code = run_cli(run, cfg)
    if code:
        raise SystemExit(code)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (see the module docstring): ``--help`` prints the options; a misspelt key or a
    malformed override is one ``error:`` line and exit status 2, before anything is loaded."""
    from diff4splat.configs import check_overrides

    args = sys.argv[1:] if argv is None else argv
    if any(a in HELP_FLAGS for a in args):
        print(options_help())
        raise SystemExit(0)
    if not any(a.split("=")[0] in HYDRA_FLAGS for a in args):
        error = check_overrides(CONF, "generate.yaml", args)
        if error is not None:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2)
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    _hydra_main()


if __name__ == "__main__":
    main()
