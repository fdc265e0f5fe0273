"""Generation speed on one GPU: image + trajectory + prompt -> 4D scene, per stage, with the time to the scene and
the time to all files.

Real architectures with random weights: the UMT5-XXL text encoder (5.7 B, bf16; tokenised by a small trained
tokenizer, since the real one is a file we do not have and tokenising costs < 1 ms), CameraWan on Wan2.2-TI2V-5B
(the shipped ``ti2v_5b`` config, bf16), the Wan2.2 VAE (bf16), the ``base`` LRDM (latent encoder by default; bf16
autocast) and the TinyVAE aligner (``wan22``). Two samplers in one invocation: the **student**, a few-step distilled
model (``sampling.mode=distilled``, ``--student-steps`` steps, no guidance: one forward per step, the compute of
FastWan or of our distilled camera model whatever its weights) and the **teacher** (``--steps`` UniPC steps with CFG
``--guidance``, both branches in one batched forward: today's default). Each run is the CLI's own path: ``make_job``
-> ``run_job`` (the pipeline, the renders and the files written into a temporary folder that is renamed into place),
timed by ``meta.json``: the CUDA-synchronised stages (text, encode, sampling, decode, lrdm, render, write), the
seconds the scene file took, **time to scene** (the Gaussians in memory and ``scene.safetensors`` written) and **time
to all files** (the last file written), both from the job's start; "in place" is run_job's wall time, which adds
meta.json, the folder's fsync and its rename. Median of ``--repeats`` runs after one warm-up (compiled rows: the
warm-up minus the median is the compilation's cost, reported), peak memory per row. Goals (49 frames): the student's
time to scene <= 1.0 s and time to all files <= 2.0 s at 352x640, time to scene <= 1.5 s at 480x832; the teacher's
end to end <= 6 s / 12 s.

The Gaussian count is the LRDM checkpoint's choice; here ``--gaussian-stride 2 --gaussian-frame-step 4`` (one
Gaussian per 2x2 pixels of every 4th frame: 732 k at 352x640) and one stored query time per latent frame (13), as
the CLI's defaults do. mp4 files are written when PyAV imports (``diff4splat.media``), ``trajectory.png`` when
matplotlib imports; otherwise those files are skipped and the results say so. Compiled graphs stay static per shape
(``automatic_dynamic_shapes`` off), so the teacher's batch of two and the student's batch of one each get their own.

    python experiments/benchmarks/generate.py --decoders tiny_vae --compile both --name generate_fast
    python experiments/benchmarks/generate.py --student-steps 0                     # the teacher only (as before)
    python experiments/benchmarks/generate.py --tiny --device cpu --out /tmp/bench   # tiny models: any machine
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timing import device_name, device_tag, provenance, provenance_line

GOALS_S = {(352, 640): 6.0, (480, 832): 12.0}  # the teacher, end to end at 49 frames
# the student at 49 frames: (time to scene, time to all files); None = no goal
STUDENT_GOALS_S = {(352, 640): (1.0, 2.0), (480, 832): (1.5, None)}
STAGES = ("text", "encode", "sampling", "decode", "lrdm", "render", "write")
BEFORE_SCENE = ("text", "encode", "sampling", "decode", "lrdm")
UMT5_XXL = {
    "vocab_size": 256384,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu",
    "dropout_rate": 0.0,
    "is_encoder_decoder": False,
    "tie_word_embeddings": False,
}


def importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def available_outputs() -> tuple[tuple[str, ...], list[str]]:
    """The CLI outputs this machine can write, and why the others are skipped."""
    from diff4splat.pipelines.outputs import OUTPUTS

    missing = {m for m in ("av", "matplotlib") if not importable(m)}
    skipped = []
    outputs = list(OUTPUTS)
    if "av" in missing:
        outputs = [o for o in outputs if o not in ("video", "render", "novel", "depth")]
        skipped.append("mp4 files (needs av)")
    if "matplotlib" in missing:
        outputs.remove("trajectory")
        skipped.append("trajectory.png (needs matplotlib)")
    return tuple(outputs), skipped


def random_umt5_xxl(device: torch.device) -> Any:
    """The UMT5-XXL encoder with random bf16 weights on ``device`` and a small trained tokenizer (``TextEncoder``)."""
    from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

    from diff4splat.models.text import TextEncoder, save_tiny_text_encoder

    with tempfile.TemporaryDirectory() as folder:
        tokenizer = AutoTokenizer.from_pretrained(str(save_tiny_text_encoder(folder) / "tokenizer"))
    with torch.device(device):
        umt5 = UMT5EncoderModel._from_config(UMT5Config(**UMT5_XXL), dtype=torch.bfloat16)
    return TextEncoder(umt5, tokenizer, identity="umt5-xxl-random")


def random_wan22_vae() -> Any:
    """The Wan2.2 VAE (the shipped config) with random bf16 weights, as ``WanVAE`` (on the CPU)."""
    from diffusers import AutoencoderKLWan

    from diff4splat.models.wan_convert import vae_config
    from diff4splat.models.wan_vae import WanVAE

    return WanVAE(AutoencoderKLWan(**vae_config()).to(torch.bfloat16))


def build_real(device: torch.device, args: argparse.Namespace) -> Any:
    """Random weights, real architectures (see the module docstring)."""
    from diff4splat.models.alignment import AlignerConfig, LatentAligner
    from diff4splat.models.camera_wan import CameraWan, CameraWanConfig
    from diff4splat.models.lrdm import LRDM, lrdm_preset
    from diff4splat.pipelines.generation import Diff4SplatPipeline

    torch.manual_seed(0)
    camera_wan = CameraWan.from_config(CameraWanConfig(arch="ti2v_5b", init="random", dtype="bfloat16"), device)
    text, vae = random_umt5_xxl(device), random_wan22_vae()
    lrdm = LRDM(
        lrdm_preset(
            "base",
            encoder=args.lrdm_encoder,
            gaussian_stride=args.gaussian_stride,
            gaussian_frame_step=args.gaussian_frame_step,
        )
    )
    aligner = LatentAligner(AlignerConfig(version="wan22"))
    aligner.set_normalisation(vae.mean, vae.std)
    aligner.to(torch.bfloat16)
    sources = {
        "kind": "random weights, real architectures",
        "text_encoder": "UMT5-XXL encoder",
        "camera_wan": "ti2v_5b",
        "vae": "Wan2.2 VAE",
        "lrdm": f"base ({args.lrdm_encoder})",
        "aligner": "TinyVAE wan22 + linear mappers",
    }
    return Diff4SplatPipeline(text, camera_wan, vae, lrdm, aligner, device=device, untrained=True, sources=sources)


def params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def make_cfg(args: argparse.Namespace, h: int, w: int, decoder: str, out: Path, sampler: dict[str, Any]) -> Any:
    from diff4splat.pipelines.jobs import GenerateConfig, LRDMOptions, RenderOptions, TrajectoryOptions
    from diff4splat.sampling import SamplingConfig

    return GenerateConfig(
        output_dir=str(out),
        overwrite=True,
        tiny=args.tiny,
        height=h,
        width=w,
        decoder=decoder,
        progress=False,
        trajectory=TrajectoryOptions(num_frames=args.frames, strength=0.3),
        sampling=SamplingConfig(**sampler["sampling"]),
        lrdm=LRDMOptions(num_times=args.num_times),
        render=RenderOptions(backend=args.render_backend),
        video_preset=args.video_preset,
    )


def samplers(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The student (distilled, ``--student-steps``; none when 0) and the teacher (``--steps``, CFG ``--guidance``)."""
    out = []
    if args.student_steps:
        out.append(
            {
                "name": "student",
                "label": f"student: {args.student_steps} distilled steps, no CFG",
                "sampling": {"mode": "distilled", "steps": args.student_steps, "guidance_scale": 1.0},
            }
        )
    out.append(
        {
            "name": "teacher",
            "label": f"teacher: {args.steps} UniPC steps, CFG {args.guidance:g}",
            "sampling": {"steps": args.steps, "guidance_scale": args.guidance},
        }
    )
    return out


def input_image(work: Path, h: int, w: int) -> Path:
    """A gradient-and-checkerboard test image of h x w pixels, written into ``work``."""
    from PIL import Image

    image = work / f"input_{h}x{w}.png"
    y, x = np.mgrid[0:h, 0:w]
    Image.fromarray(np.stack([x * 255 // w, y * 255 // h, (x // 32 + y // 32) % 2 * 200], -1).astype(np.uint8)).save(
        image
    )
    return image


def bench_size(
    pipe: Any,
    args: argparse.Namespace,
    h: int,
    w: int,
    decoder: str,
    work: Path,
    outputs: tuple[str, ...],
    sampler: dict[str, Any],
    compiled: bool = False,
) -> dict[str, Any]:
    from diff4splat.pipelines.jobs import make_job, run_job

    pipe.decoder = decoder
    image = input_image(work, h, w)
    runs: list[dict[str, float]] = []
    files: list[dict[str, float]] = []
    peak = 0.0
    warmup: dict[str, float] = {}
    for i in range(1 + args.repeats):
        target = work / f"run_{h}x{w}_{decoder}_{sampler['name']}_{i}"
        cfg = make_cfg(args, h, w, decoder, target, sampler)
        job = make_job(cfg, image, "orbit", "a drone flies over a lake at sunset", i, target)
        if pipe.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        folder = run_job(pipe, job, cfg, outputs=outputs)
        in_place = time.perf_counter() - start
        meta = json.loads((folder / "meta.json").read_text())
        if pipe.device.type == "cuda":
            peak = max(peak, torch.cuda.max_memory_allocated() / 2**30)
        n_gauss, n_times = meta["lrdm"]["num_gaussians"], len(meta["lrdm"]["query_times"])
        size_mb = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20
        shutil.rmtree(folder)
        timings = meta["timings"]
        t = {k: timings[k] for k in STAGES}
        t["scene_file"] = timings["write_files"].get("scene.safetensors", 0.0)
        t["time_to_scene"] = timings["time_to_scene"]
        t["time_to_all_files"] = timings["time_to_all_files"]
        t["in_place"] = in_place
        print(
            f"  {h}x{w}x{args.frames} {decoder:<8} {sampler['name']}{' compiled' if compiled else ''} run {i}"
            f"{' (warm-up)' if i == 0 else ''}: " + " ".join(f"{k} {v:.3f}" for k, v in t.items()),
            flush=True,
        )
        if i == 0:
            warmup = t
        else:
            runs.append(t)
            files.append(timings.get("write_files", {}))
    median = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
    best = {k: float(np.min([r[k] for r in runs])) for k in runs[0]}
    file_median = {k: float(np.median([f[k] for f in files])) for k in files[0]} if files and files[0] else {}
    full = args.frames == 49 and not args.tiny
    goals: dict[str, float] = {}
    if full and sampler["name"] == "student" and (h, w) in STUDENT_GOALS_S:
        scene_goal, files_goal = STUDENT_GOALS_S[(h, w)]
        goals = {"time_to_scene": scene_goal, **({"time_to_all_files": files_goal} if files_goal else {})}
    elif full and sampler["name"] == "teacher" and (h, w) in GOALS_S:
        goals = {"time_to_all_files": GOALS_S[(h, w)]}
    return {
        "size": f"{args.frames}x{h}x{w}",
        "decoder": decoder,
        "sampler": sampler["name"],
        "sampler_label": sampler["label"],
        "sampling": sampler["sampling"],
        "compiled": compiled,
        "median_s": median,
        "min_s": best,
        "warmup_s": warmup,
        "compile_s": warmup["time_to_all_files"] - median["time_to_all_files"] if compiled else None,
        "runs": runs,
        "write_files_median_s": file_median,
        "peak_GiB": peak,
        "num_gaussians": n_gauss,
        "query_times": n_times,
        "output_MiB": size_mb,
        "goals_s": goals,
        "goals_met": {k: median[k] <= v for k, v in goals.items()},
    }


def render_probe(pipe: Any, args: argparse.Namespace, h: int, w: int, work: Path, passes: list[int]) -> dict[str, Any]:
    """The render stage's work (the trajectory's F views at their times + F novel views at t = 0.5) on one generated
    scene with ``views_per_pass`` in ``passes``: median seconds of 3, CUDA-synchronised."""
    from diff4splat.pipelines.jobs import make_job
    from diff4splat.sampling import SamplingConfig

    cfg = make_cfg(args, h, w, pipe.decoder, work / "probe", samplers(args)[0])
    job = make_job(cfg, input_image(work, h, w), "orbit", "", 0, work / "probe")
    cams = job.cameras
    gen = pipe(
        job.image,
        cams.c2w.float(),
        cams.fxfycxcy.float(),
        cams.times.float(),
        "",
        sampling=SamplingConfig(**{**samplers(args)[0]["sampling"], "seed": 0}),
    )
    scene = gen.scene
    f = scene.c2w.shape[0]
    novel_fx, novel_t = scene.fxfycxcy[:1].expand(f, 4), torch.full((f,), 0.5)

    def once(n: int) -> float:
        sync = torch.cuda.synchronize if pipe.device.type == "cuda" else (lambda: None)
        sync()
        start = time.perf_counter()
        pipe.render(scene, scene.c2w, scene.fxfycxcy, scene.input_times, views_per_pass=n)
        pipe.render(scene, scene.c2w.flip(0), novel_fx, novel_t, views_per_pass=n)
        sync()
        return time.perf_counter() - start

    seconds = {}
    for n in passes:
        once(n)  # warm-up (allocator, kernels)
        seconds[n] = float(np.median([once(n) for _ in range(3)]))
        print(f"  render probe {h}x{w}: {2 * f} views, {n} per pass: {seconds[n]:.3f} s", flush=True)
    return {
        "size": f"{args.frames}x{h}x{w}",
        "views": 2 * f,
        "num_gaussians": scene.gaussians.num_gaussians,
        "seconds_by_views_per_pass": seconds,
    }


def markdown(record: dict[str, Any]) -> str:
    cols = [*BEFORE_SCENE, "scene_file", "time_to_scene", "render", "write", "time_to_all_files", "in_place"]
    names = {"scene_file": "scene file", "time_to_scene": "**time to scene**", "time_to_all_files": "**all files**"}
    head = "| size | sampler | compiled | " + " | ".join(names.get(c, c.replace("_", " ")) for c in cols)
    head += " | peak GiB | compile s | goals |\n|---|---|---|" + "---:|" * (len(cols) + 2) + "---|\n"
    rows = []
    for r in record["results"]:
        m = r["median_s"]
        goals = ", ".join(
            f"{k.replace('_', ' ')} <= {v:g} s: {'met' if r['goals_met'][k] else 'NOT met'}"
            for k, v in r["goals_s"].items()
        )
        cells = [f"**{m[c]:.3f}**" if c.startswith("time_to") else f"{m[c]:.3f}" for c in cols]
        compile_s = "" if r["compile_s"] is None else f"{r['compile_s']:.1f}"
        rows.append(
            f"| {r['size']} | {r['sampler']} | {'yes' if r['compiled'] else 'no'} | "
            + " | ".join(cells)
            + f" | {r['peak_GiB']:.1f} | {compile_s} | {goals} |"
        )
    first = record["results"][0]
    labels = sorted({f"{r['sampler']} = {r['sampler_label'].split(': ', 1)[1]}" for r in record["results"]})
    notes = [
        f"- Samplers: {'; '.join(labels)}. Decoder: {', '.join(sorted({r['decoder'] for r in record['results']}))}.",
        f"- Gaussians per scene: {first['num_gaussians']:,} ({first['query_times']} stored query times); "
        f"files per scene {first['output_MiB']:.0f} MiB.",
        f"- Outputs written: {', '.join(record['outputs'])}"
        + (f"; skipped: {'; '.join(record['skipped'])}." if record["skipped"] else "."),
        f"- Render backend: {record['render_backend']}. Seconds are medians of {record['repeats']} runs after a "
        "warm-up (the compiled rows' warm-up includes the compilation: compile s = its time to all files minus the "
        "median's); model building is not counted. Stages are sequential on the GPU thread (the scene file is written "
        "while the renders run, so it is not a stage); time to scene and to all files are from the job's start.",
        f"- mp4 files: libx264 preset {record.get('video_preset', 'medium')}. Per-file write seconds (they run "
        "concurrently; median):",
    ]
    for probe in record.get("render_probes", []):
        by = ", ".join(f"{n} per pass {t:.3f} s" for n, t in probe["seconds_by_views_per_pass"].items())
        notes.append(
            f"- Render stage's work alone ({probe['size']}, {probe['views']} views of {probe['num_gaussians']:,} "
            f"Gaussians, median of 3): {by}."
        )
    for r in record["results"]:
        if r.get("write_files_median_s"):
            slow = sorted(r["write_files_median_s"].items(), key=lambda kv: -kv[1])
            notes.append(
                f"  - {r['size']} {r['sampler']}{' compiled' if r['compiled'] else ''}: "
                + ", ".join(f"{k} {v:.2f}" for k, v in slow)
            )
    return (
        f"# Generation: image + trajectory + prompt -> 4D scene, time to scene and to all files\n\n"
        f"{provenance_line(record)}\n\n{record['models']}\n\n{head}"
        + "\n".join(rows)
        + "\n\n"
        + "\n".join(notes)
        + "\n"
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    p.add_argument("--sizes", nargs="*", default=None, help="HxW (default 352x640 480x832; tiny: 96x160)")
    p.add_argument("--frames", type=int, default=None, help="1 + 4k (default 49; tiny: 13)")
    p.add_argument("--steps", type=int, default=25, help="the teacher's UniPC steps")
    p.add_argument("--guidance", type=float, default=5.0, help="the teacher's CFG scale")
    p.add_argument("--student-steps", type=int, default=4, help="the distilled student's steps (0: no student rows)")
    p.add_argument(
        "--teacher-sizes", nargs="*", default=None, help="HxW the teacher runs at (default: --sizes; none given: none)"
    )
    p.add_argument("--name", default="generate", help="results file name: <name>_<device>.md / .json")
    p.add_argument(
        "--render-probe", type=int, nargs="*", default=[], help="views per render pass to time alone (e.g. 1 8 16)"
    )
    p.add_argument("--decoders", nargs="*", default=["wan", "tiny_vae"], choices=["wan", "tiny_vae"])
    p.add_argument("--lrdm-encoder", default="latent", choices=["latent", "rgb"])
    p.add_argument("--gaussian-stride", type=int, default=2)
    p.add_argument("--gaussian-frame-step", type=int, default=4)
    p.add_argument("--num-times", type=int, default=None, help="stored query times (default: one per latent frame)")
    p.add_argument("--render-backend", default="auto", choices=["auto", "gsplat", "torch"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tiny", action="store_true", help="tiny random models (checks the script on any machine)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--work-dir", default=None, help="where scenes are written (default: a temporary folder)")
    p.add_argument(
        "--compile",
        default="none",
        choices=["none", "blocks", "both"],
        help="torch.compile the CameraWan blocks (both: every configuration eager, then compiled)",
    )
    p.add_argument("--video-preset", default="superfast", help="libx264 preset of the mp4 files (the CLI's default)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("generate benchmark: --device cuda but CUDA is not available (use --tiny --device cpu to check it)")
    if not args.tiny and device.type != "cuda":
        sys.exit("generate benchmark: the real architectures need a CUDA GPU; use --tiny --device cpu on a CPU")
    args.frames = args.frames or (13 if args.tiny else 49)
    sizes = [
        tuple(int(v) for v in s.split("x"))
        for s in (args.sizes or (["96x160"] if args.tiny else ["352x640", "480x832"]))
    ]
    if device.type == "cpu":
        torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.benchmark = True

    if not importable("omegaconf"):  # diff4splat.configs (typed configs) is imported by the model modules
        sys.exit("generate benchmark: needs omegaconf (+ antlr4-python3-runtime, PyYAML): pip install the wheels")
    from diff4splat.pipelines.generation import Diff4SplatPipeline
    from diff4splat.rendering.api import resolve_backend

    outputs, skipped = available_outputs()
    t0 = time.perf_counter()
    if args.tiny:
        pipe = Diff4SplatPipeline.tiny(seed=0, lrdm_encoder=args.lrdm_encoder, device=device)
    else:
        pipe = build_real(device, args)
    build_s = time.perf_counter() - t0
    counts = {
        name: params(m)
        for name, m in (
            ("text_encoder", pipe.text_encoder),
            ("camera_wan", pipe.camera_wan),
            ("vae", pipe.vae),
            ("lrdm", pipe.lrdm),
            ("aligner", pipe.aligner),
        )
    }
    lc = pipe.lrdm.config
    models = (
        "Models"
        + (" (tiny)" if args.tiny else "")
        + ": "
        + ", ".join(f"{k} {v / 1e6:,.1f} M" for k, v in counts.items())
        + f"; LRDM encoder {lc.encoder}, gaussian stride {lc.gaussian_stride}, frame step "
        f"{lc.gaussian_frame_step}."
    )
    print(f"built in {build_s:.1f} s. {models}", flush=True)
    record: dict[str, Any] = {
        **provenance("generate.py", argv, device_name(device)),
        "tiny": args.tiny,
        "models": models,
        "parameters": counts,
        "build_s": build_s,
        "outputs": list(outputs),
        "skipped": skipped,
        "repeats": args.repeats,
        "render_backend": resolve_backend(args.render_backend, device),
        "video_preset": args.video_preset,
        "results": [],
    }
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="diff4splat-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "tiny_" if args.tiny else ""
    tag += device_tag(record["device"])
    variants = {"none": [False], "blocks": [True], "both": [False, True]}[args.compile]
    teacher = sizes if args.teacher_sizes is None else args.teacher_sizes  # given empty: no teacher rows
    teacher_sizes = [tuple(int(v) for v in t.split("x")) if isinstance(t, str) else t for t in teacher]
    torch._dynamo.config.automatic_dynamic_shapes = False  # one static graph per shape (see the module docstring)
    rows = [
        (c, sampler, s, d)
        for c in variants
        for sampler in samplers(args)
        for s in (sizes if sampler["name"] == "student" else teacher_sizes)
        for d in args.decoders
    ]
    try:
        for compiled, sampler, (h, w), decoder in rows:
            if compiled and not getattr(pipe, "_compiled", False):
                pipe.compile()
                pipe._compiled = True
            try:
                record["results"].append(bench_size(pipe, args, h, w, decoder, work, outputs, sampler, compiled))
            except torch.OutOfMemoryError as e:
                print(f"  {h}x{w} {decoder} {sampler['name']}: OOM ({str(e).splitlines()[0][:160]})", flush=True)
                record.setdefault("errors", []).append(
                    {"size": f"{h}x{w}", "decoder": decoder, "sampler": sampler["name"], "error": "OOM"}
                )
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            (out / f"{args.name}_{tag}.json").write_text(json.dumps(record, indent=2))
            if record["results"]:
                (out / f"{args.name}_{tag}.md").write_text(markdown(record))
        if args.render_probe:
            h, w = sizes[0]
            record["render_probes"] = [render_probe(pipe, args, h, w, work, args.render_probe)]
            (out / f"{args.name}_{tag}.json").write_text(json.dumps(record, indent=2))
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    if not record["results"]:
        sys.exit("generate benchmark: no configuration ran (see the errors above)")
    md = markdown(record)
    (out / f"{args.name}_{tag}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
