"""Gradio demo: an image, a trajectory preset and its strength, a prompt and a seed in; the generated video, a render
of the 4D scene along the trajectory and the scene files (``.splat``, native 4D ``.safetensors``) out.

    python -m diff4splat.demo tiny=true                    # tiny random weights: any machine, labelled UNTRAINED
    python -m diff4splat.demo device=cuda models.lrdm=...  # the generation CLI's overrides (conf/generate.yaml)
    python -m diff4splat.demo --port 7860 --outputs outputs/demo tiny=true

Needs the ``viewer`` extra (``pip install -e ".[viewer]"``). The app binds to 127.0.0.1 unless ``--host`` says
otherwise. The pipeline (`diff4splat.pipelines.generation.Diff4SplatPipeline`) is built once, when the app starts;
requests run one at a time. Each request writes a folder under ``--outputs`` with everything the generation CLI
writes (``meta.json`` records the inputs and seed) plus ``scene.splat``: the Gaussians at the first frame's time
(``.splat`` holds one static set). ``build_demo`` lays out the UI around any callback; ``DemoRunner`` is the
callback (``DemoRunner.generate`` raises `InputError` on bad input, the UI shows it as a Gradio error).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import sys
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from diff4splat.cli import InputError, run_cli
from diff4splat.gaussians.io import save_splat
from diff4splat.geometry.trajectories import PRESETS
from diff4splat.pipelines.cameras import check_num_frames
from diff4splat.pipelines.generation import Diff4SplatPipeline, resolve_device
from diff4splat.pipelines.jobs import DEFAULT_FRAMES, TINY_FRAMES, GenerateConfig, make_job, model_size, run_job
from diff4splat.pipelines.memory import check_memory
from diff4splat.pipelines.outputs import read_scene_output

log = logging.getLogger("diff4splat.demo")

SPLAT_FILE = "scene.splat"


@dataclass
class DemoResult:
    """What one request produced (paths inside its output folder)."""

    folder: Path
    video: Path  # video.mp4: the generated frames
    render: Path  # render.mp4: the 4D scene rendered along the trajectory
    splat: Path  # scene.splat: the Gaussians at the first frame's time
    scene: Path  # scene.safetensors: the 4D scene
    status: str  # markdown: labels, sizes and timings


class DemoRunner:
    """The demo's callback: one generation per call with the pipeline built once from ``cfg``."""

    def __init__(self, cfg: GenerateConfig, outputs: str | Path, pipeline: Diff4SplatPipeline | None = None) -> None:
        self.cfg = replace(cfg, progress=False)
        self.outputs = Path(outputs)
        # every request has this size: checked once, before the models are built (a check per request would count
        # the loaded weights a second time)
        if pipeline is None:
            frames = cfg.trajectory.num_frames or (TINY_FRAMES if cfg.tiny else DEFAULT_FRAMES)
            check_memory(cfg, check_num_frames(frames), *model_size(cfg), str(resolve_device(cfg.device)))
        self.cfg = replace(self.cfg, check_memory=False)
        self.pipeline = pipeline if pipeline is not None else Diff4SplatPipeline.from_config(self.cfg)

    def generate(self, image: str | None, preset: str, strength: float, prompt: str, seed: float | int) -> DemoResult:
        """Run one request; bad input raises `InputError` naming the field, before anything is written."""
        if not image:
            raise InputError("image: upload an image (the first frame of the video)")
        key = str(preset).replace("-", "_").lower()
        if key not in PRESETS:
            raise InputError(f"trajectory: {preset!r} is not a preset; expected one of {', '.join(sorted(PRESETS))}")
        try:
            strength, seed_f = float(strength), float(seed)
        except (TypeError, ValueError) as e:
            raise InputError(f"strength / seed: expected numbers, got {strength!r} / {seed!r}") from e
        if not seed_f.is_integer() or seed_f < 0:
            raise InputError(f"seed: expected a non-negative integer, got {seed!r}")
        cfg = replace(self.cfg, trajectory=replace(self.cfg.trajectory, strength=strength))
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        target = self.outputs / f"{stamp}-{uuid.uuid4().hex[:6]}"
        job = make_job(cfg, image, key, prompt or "", int(seed_f), target, "")
        folder = run_job(self.pipeline, job, cfg)
        scene = read_scene_output(folder)
        splat = save_splat(scene.gaussians.at(float(scene.gaussians.times[0])), folder / SPLAT_FILE)
        meta = json.loads((folder / "meta.json").read_text())
        lines = []
        if self.pipeline.untrained:
            lines.append(f"**{meta.get('label', 'UNTRAINED')}**")
        timings = meta.get("timings", {})
        lines.append(
            f"{scene.gaussians.num_gaussians} Gaussians, {scene.gaussians.num_times} query times, "
            f"{len(scene.cameras) if scene.cameras is not None else 0} frames; "
            f"{timings.get('total', float('nan')):.1f} s. Files: `{folder}`"
        )
        return DemoResult(
            folder, folder / "video.mp4", folder / "render.mp4", splat, folder / "scene.safetensors", "\n\n".join(lines)
        )

    def __call__(
        self, image: str | None, preset: str, strength: float, prompt: str, seed: float | int
    ) -> tuple[str, str, str, list[str], str]:
        """The Gradio callback: (video, render, splat preview, downloads, status); bad input -> ``gr.Error``."""
        import gradio as gr

        try:
            r = self.generate(image, preset, strength, prompt, seed)
        except (InputError, ValueError) as e:  # bad input: the reason, as the CLI's error line says it
            raise gr.Error(str(e)) from e
        except Exception as e:  # a failure of the machine or a bug: the user still sees what happened
            log.exception("request failed")
            raise gr.Error(f"generation failed: {type(e).__name__}: {e}") from e
        return str(r.video), str(r.render), str(r.splat), [str(r.splat), str(r.scene)], r.status


def image_input(label: str) -> Any:
    """The image upload: hands the callback the file's path as uploaded (``image_mode=None``, so transparency and
    16-bit data reach `diff4splat.pipelines.inputs.read_image`); a file that is not an image, or one too large to
    open, is refused with the reason (a ``gr.Error``) instead of gradio's generic "upstream app raised an exception"."""
    import gradio as gr

    # wrapped on the instance: a gr.Image subclass would make gradio write a .pyi stub beside this module
    image = gr.Image(type="filepath", image_mode=None, label=label)
    preprocess = image.preprocess

    def checked(payload: Any) -> Any:
        try:
            return preprocess(payload)
        except gr.Error:
            raise
        except Exception as e:  # PIL's UnidentifiedImageError, DecompressionBombError, ...
            name = getattr(payload, "orig_name", None) or getattr(payload, "path", None) or "the upload"
            raise gr.Error(f"image: {name}: not an image this demo can read ({e})") from e

    image.preprocess = checked
    return image


def build_demo(callback: Any, default_preset: str = "orbit", title: str = "Diff4Splat") -> Any:
    """The Gradio Blocks UI around ``callback(image_path, preset, strength, prompt, seed)`` returning (video path,
    render path, .splat path, [download paths], status markdown)."""
    import gradio as gr

    with gr.Blocks(title=title) as demo:
        gr.Markdown(f"# {title}\nOne image, a camera trajectory and a prompt to a 4D Gaussian scene.")
        with gr.Row():
            with gr.Column():
                image = image_input("Image (first frame)")
                preset = gr.Dropdown(sorted(PRESETS), value=default_preset, label="Trajectory")
                strength = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Trajectory strength")
                prompt = gr.Textbox(label="Prompt", lines=2)
                seed = gr.Number(value=0, precision=0, minimum=0, label="Seed")
                run = gr.Button("Generate", variant="primary")
            with gr.Column():
                video = gr.Video(label="Generated video")
                render = gr.Video(label="4D scene rendered along the trajectory")
                splat = gr.Model3D(label="Scene at the first frame (.splat)")
                files = gr.File(label="Downloads (.splat, .safetensors)", file_count="multiple")
                status = gr.Markdown()
        run.click(
            callback, inputs=[image, preset, strength, prompt, seed], outputs=[video, render, splat, files, status]
        )
    return demo


def load_config(overrides: list[str]) -> GenerateConfig:
    """``conf/generate.yaml`` with Hydra overrides (``tiny=true``, ``models.lrdm=...``), typed as the generation CLI's."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    from diff4splat.generate import to_config

    conf = Path(__file__).resolve().parent.parent / "conf"
    GlobalHydra.instance().clear()  # an entry point: no other Hydra context is in use
    try:
        with initialize_config_dir(str(conf), version_base="1.3"):
            return to_config(compose("generate", overrides=overrides))
    except HydraException as e:  # a misspelt or malformed override is bad input
        raise InputError(str(e)) from e


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="conf/generate.yaml overrides, e.g. tiny=true device=cuda")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--outputs", default="outputs/demo", help="folder for the requests' outputs")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    demo = build_demo(DemoRunner(load_config(args.overrides), args.outputs))
    demo.queue(default_concurrency_limit=1)
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        allowed_paths=[str(Path(args.outputs).resolve())],
        show_error=True,
    )


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, parse_args(argv), log=True)


if __name__ == "__main__":
    sys.exit(main())
