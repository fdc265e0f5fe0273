"""The fast path of `python -m diff4splat.generate`: the scene is ready before the slow files, the files are written off
the critical path (and come out identical to writing them one after another), meta.json records both times, and a
writer that fails still ends in one error line with nothing left behind. Tiny random-weight models on the CPU."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diff4splat import files
from diff4splat.cli import run_cli
from diff4splat.gaussians import io as gaussian_io
from diff4splat.gaussians.io import load_4d, read_4d_metadata
from diff4splat.geometry.trajectories import make_trajectory
from diff4splat.pipelines import outputs
from diff4splat.pipelines.generation import Diff4SplatPipeline
from diff4splat.pipelines.jobs import (
    GenerateConfig,
    RenderOptions,
    TrajectoryOptions,
    generate,
    make_job,
    run_job,
    run_jobs,
)
from diff4splat.pipelines.outputs import SCENE_FILE
from diff4splat.pipelines.reconstruction import ReconstructionPipeline
from diff4splat.pipelines.stages import STAGES
from diff4splat.sampling import SamplingConfig
from tests.test_generate import one_thread  # noqa: F401 (an autouse fixture: one intra-op thread)

SLOW_S = 0.4  # what a slowed-down mp4 writer sleeps before writing
BEFORE_SCENE = ("text", "encode", "sampling", "decode", "lrdm")


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    y, x = np.mgrid[0:96, 0:160]
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    Image.fromarray(np.stack([x * 255 // 160, y * 255 // 96, (x // 16 + y // 16) % 2 * 200], -1).astype(np.uint8)).save(
        path
    )
    return path


@pytest.fixture(scope="module")
def pipe() -> Diff4SplatPipeline:
    return Diff4SplatPipeline.tiny(seed=0)


def small_cfg(photo: Path, out: Path, **kw) -> GenerateConfig:
    return GenerateConfig(
        image=str(photo),
        tiny=True,
        output_dir=str(out),
        progress=False,
        trajectory=TrajectoryOptions(num_frames=5, strength=0.2),
        sampling=SamplingConfig(steps=2),
        **kw,
    )


def folder_names() -> list[str]:
    """The entries of a generation folder (``small_cfg``)."""
    return [SCENE_FILE, "ply", "video.mp4", "render.mp4", "novel.mp4", "depth.mp4", "trajectory.png", "meta.json"]


def folder_contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_scene_is_ready_before_the_slow_files_and_writing_in_parallel_changes_no_byte(
    tmp_path, photo, pipe, monkeypatch
):
    real_write_video = outputs.write_video
    encoded: dict[str, list[np.ndarray]] = {}  # the frames each mp4 writer was handed, per run
    spans: list[tuple[float, float]] = []  # when each mp4 writer ran

    def slow_write_video(frames, path, *args, **kwargs):
        encoded.setdefault(Path(path).name, []).append(frames.copy())
        start = time.perf_counter()
        time.sleep(SLOW_S)
        real_write_video(frames, path, *args, **kwargs)
        spans.append((start, time.perf_counter()))

    monkeypatch.setattr(outputs, "write_video", slow_write_video)
    seen: dict[str, object] = {}

    def on_scene(path: Path | None) -> None:  # runs while the mp4s are still being encoded
        seen["entries"] = sorted(p.name for p in path.parent.iterdir() if not p.name.startswith("."))
        seen["scene"] = load_4d(path)

    folders, metas, overlapping = {}, {}, {}
    for workers in (None, 0):
        cfg = small_cfg(photo, tmp_path / f"out_{workers}", write_workers=workers)
        job = make_job(cfg, photo, "orbit", "a boat", 3, Path(cfg.output_dir))
        spans.clear()
        folder = run_job(pipe, job, cfg, on_scene=on_scene if workers is None else None)
        folders[workers], metas[workers] = folder_contents(folder), json.loads((folder / "meta.json").read_text())
        spans.sort()
        overlapping[workers] = sum(
            b[0] < a[1] for a, b in zip(spans, spans[1:])
        )  # writers that began before the last ended

    # the scene file was complete (it loads, and equals the final one) before any mp4 existed
    assert SCENE_FILE in seen["entries"] and not any(e.endswith(".mp4") for e in seen["entries"]), seen["entries"]
    final = load_4d(tmp_path / "out_None" / SCENE_FILE)
    assert torch.equal(seen["scene"].delta_means, final.delta_means)
    # the parallel writers and the one-after-another reference write the same files, byte for byte
    sync, fast = folders[0], folders[None]
    names = [SCENE_FILE, "video.mp4", "render.mp4", "novel.mp4", "depth.mp4", "trajectory.png", "meta.json"]
    names += ["ply/times.json", "ply/frame_0000.ply", "ply/frame_0001.ply"]  # one per latent frame (5 frames: 2)
    assert sorted(sync) == sorted(fast) == sorted(names)
    assert sorted(folder_names()) == sorted({name.split("/")[0] for name in names})
    # byte for byte but for two writers that are not reproducible themselves: safetensors orders its metadata keys
    # at random (compared by content), and x264's output depends on the machine's load (its threads), so the mp4s
    # are compared by the frames they were handed
    assert [k for k in sync if not k.endswith((".mp4", ".safetensors", "meta.json")) and sync[k] != fast[k]] == []
    scenes = [load_4d(tmp_path / f"out_{w}" / SCENE_FILE) for w in (0, None)]
    assert all(
        torch.equal(getattr(scenes[0], k), getattr(scenes[1], k)) for k in ("times", "delta_means", "delta_quats")
    )
    assert all(
        torch.equal(a, b) for a, b in zip(vars(scenes[0].canonical).values(), vars(scenes[1].canonical).values())
    )
    assert len({json.dumps(read_4d_metadata(tmp_path / f"out_{w}" / SCENE_FILE)) for w in (0, None)}) == 1
    assert sorted(encoded) == ["depth.mp4", "novel.mp4", "render.mp4", "video.mp4"]
    assert all(len(runs) == 2 and np.array_equal(*runs) for runs in encoded.values())
    strip = ("timings", "created")
    assert {k: v for k, v in metas[0].items() if k not in strip} == {
        k: v for k, v in metas[None].items() if k not in strip
    }
    for meta in metas.values():
        t = meta["timings"]
        assert sum(t[s] for s in BEFORE_SCENE) <= t["time_to_scene"] <= t["time_to_all_files"]
        assert_stages_fill_the_wall_clock(t)
    # in parallel the mp4 writers overlap (the renders' three start together); in turn, none does
    assert overlapping[None] >= 2 and overlapping[0] == 0, overlapping


def test_a_failing_writer_is_one_error_line_exit_2_and_leaves_no_folder(tmp_path, photo, capsys, monkeypatch):
    def broken_ply(*args, **kwargs):
        raise ValueError("ply frames: cannot be written (a broken writer)")

    monkeypatch.setattr(gaussian_io, "save_ply_sequence", broken_ply)
    out = tmp_path / "new" / "out"
    cfg = small_cfg(photo, out, render=RenderOptions(novel_frames=2))
    assert run_cli(generate, cfg) == 2  # what `python -m diff4splat.generate` exits with
    err = capsys.readouterr().err  # (building the tiny text encoder shows progress bars too)
    assert [line for line in err.splitlines() if "error" in line] == [
        "error: ply frames: cannot be written (a broken writer)"
    ]
    assert list(tmp_path.iterdir()) == []  # no output folder, no temporary folder, no parent made for it


def test_files_in_an_atomic_folder_are_flushed_once_with_it_and_alone_by_themselves(tmp_path, monkeypatch):
    flushed: list[str] = []
    real_fsync_tree = files.fsync_tree

    def spy(path):
        flushed.append(Path(path).name)
        real_fsync_tree(path)

    monkeypatch.setattr(files, "fsync_tree", spy)
    with files.atomic_dir(tmp_path / "out") as tmp:
        files.atomic_write_text(tmp / "scene.txt", "written")
        assert flushed == [] and (tmp / "scene.txt").read_text() == "written"  # no flush of its own
    assert flushed == [tmp.name] and (tmp_path / "out" / "scene.txt").read_text() == "written"  # the folder's
    files.atomic_write_text(tmp_path / "alone.txt", "alone")
    assert len(flushed) == 2 and flushed[1].startswith(".alone.txt.")  # outside a folder: flushed by itself


def _batched_against_view_by_view(device: str) -> None:
    pipe = Diff4SplatPipeline.tiny(seed=1, device=device)
    traj = make_trajectory("orbit", 9, strength=0.2)
    image = torch.rand(3, 96, 160, generator=torch.Generator().manual_seed(0))
    scene = pipe(image, traj.c2w.float(), traj.fxfycxcy.float(), None, "", sampling=SamplingConfig(steps=2)).scene
    views = ReconstructionPipeline(pipe.lrdm, pipe.vae, pipe._views.backend)
    novel = make_trajectory("orbit", 9, strength=0.1, look_at=1.0).c2w.float()
    for c2w, times in ((scene.c2w, scene.input_times), (novel, torch.full((9,), 0.5))):  # per-view times; one time
        fx = scene.fxfycxcy[:1].expand(9, 4)
        rgb, depth = pipe.render(scene, c2w, fx, times, views_per_pass=4)  # passes of 4, 4 and 1 views
        ref_rgb, ref_depth = views.render_views(scene, c2w.to(device), fx, times.to(device))
        assert rgb.shape == (9, 3, 96, 160) and depth.shape == (9, 1, 96, 160)
        assert rgb.std() > 0.01  # the views see the scene
        # the same pixels but a few: batched deformation rounds the same sums in another order, so a Gaussian at a
        # pixel's cut-off (alpha or tile bounds) can flip it
        for ours, ref, tol in ((rgb, ref_rgb, 1e-5), (depth, ref_depth, 1e-4)):
            off = (ours - ref).abs() > tol * (1 + ref.abs())
            assert off.float().mean() < 1e-4 and (ours - ref).abs().max() < 0.01, (off.sum(), (ours - ref).abs().max())


def test_batched_renders_equal_view_by_view_renders():
    _batched_against_view_by_view("cpu")


@pytest.mark.gpu
def test_batched_renders_equal_view_by_view_renders_with_gsplat():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    _batched_against_view_by_view("cuda")


@pytest.mark.gpu
def test_on_cuda_the_scene_file_copied_on_its_own_stream_agrees_with_the_ply_frames(tmp_path, photo):
    """The scene leaves the GPU on a copy stream while the renders run; the ply frames take the default stream."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from plyfile import PlyData

    pipe = Diff4SplatPipeline.tiny(seed=0, device="cuda")
    cfg = small_cfg(photo, tmp_path / "out", device="cuda")
    folder = run_job(pipe, make_job(cfg, photo, "orbit", "a boat", 3, Path(cfg.output_dir)), cfg)
    scene = load_4d(folder / SCENE_FILE)
    for i in range(scene.num_times):
        vertex = PlyData.read(str(folder / "ply" / f"frame_{i:04d}.ply"))["vertex"]
        means = np.stack([vertex["x"], vertex["y"], vertex["z"]], 1)
        np.testing.assert_allclose(means, scene.at_index(i).means.numpy(), atol=1e-5)


def assert_stages_are_disjoint(t: dict) -> None:
    """The stages are disjoint intervals of the job's wall clock up to its last file: their sum never exceeds
    ``time_to_all_files`` (a write stage counted as the files' overlapping seconds would), and the write stage holds
    the slowed mp4 writers queued after the renders (each sleeps ``SLOW_S``)."""
    assert sum(t[s] for s in STAGES) <= t["time_to_all_files"] + 1e-3
    assert t["write"] >= SLOW_S


def assert_stages_fill_the_wall_clock(t: dict) -> None:
    """`assert_stages_are_disjoint`, and with nothing else running only the untimed steps between stages separate
    their sum from ``time_to_all_files`` (a few ms idle; the bound leaves room for a loaded 2-core CI machine). Not
    asserted for a batch: there the next scene's Python competes with the last one's writer threads for the GIL, and
    on CI the untimed steps grew to 0.73 s of 1.71 s."""
    assert_stages_are_disjoint(t)
    assert t["time_to_all_files"] - sum(t[s] for s in STAGES) <= 0.05 + 0.25 * t["time_to_all_files"]


def _batch(photo: Path, out: Path) -> tuple[GenerateConfig, list]:
    cfg = small_cfg(photo, out)
    return cfg, [make_job(cfg, photo, "orbit", "a boat", seed, out / f"s{seed}") for seed in (1, 2)]


def test_a_batch_generates_the_next_scene_while_the_last_ones_files_are_written(tmp_path, photo, pipe, monkeypatch):
    events: list[tuple[str, float]] = []
    real_write_video, real_call = outputs.write_video, Diff4SplatPipeline.__call__

    def slow_write_video(frames, path, *args, **kwargs):
        time.sleep(SLOW_S)
        real_write_video(frames, path, *args, **kwargs)
        events.append((f"mp4 of {Path(path).parent.name}", time.perf_counter()))

    def spy_call(self, *args, **kwargs):
        events.append(("generate", time.perf_counter()))
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(outputs, "write_video", slow_write_video)
    monkeypatch.setattr(Diff4SplatPipeline, "__call__", spy_call)
    cfg, jobs = _batch(photo, tmp_path / "batch")
    assert run_jobs(pipe, jobs, cfg) == [job.target for job in jobs]
    second_generation = [t for what, t in events if what == "generate"][1]
    first_mp4s_done = max(t for what, t in events if what.startswith("mp4 of .s1."))  # its temporary folder's
    assert second_generation < first_mp4s_done  # the first scene's files were still being written
    for job in jobs:  # each folder complete, its times its own
        assert sorted(p.name for p in job.target.iterdir()) == sorted(folder_names())
        assert_stages_are_disjoint(json.loads((job.target / "meta.json").read_text())["timings"])
    assert sorted(p.name for p in (tmp_path / "batch").iterdir()) == ["s1", "s2"]  # no temporary folder left


def test_a_batch_whose_first_files_fail_while_the_next_scene_runs_leaves_neither_folder(
    tmp_path, photo, pipe, monkeypatch
):
    real_write_video = outputs.write_video

    def failing_for_the_first(frames, path, *args, **kwargs):
        if Path(path).name == "depth.mp4" and Path(path).parent.name.startswith(".s1."):
            time.sleep(SLOW_S)  # fails once the next scene has started
            raise ValueError("depth.mp4: cannot be written (a broken writer)")
        return real_write_video(frames, path, *args, **kwargs)

    monkeypatch.setattr(outputs, "write_video", failing_for_the_first)
    cfg, jobs = _batch(photo, tmp_path / "batch")
    with pytest.raises(ValueError, match="a broken writer"):
        run_jobs(pipe, jobs, cfg)
    assert list((tmp_path / "batch").iterdir()) == []  # neither the failed folder nor the next one
