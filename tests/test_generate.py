"""`python -m diff4splat.generate` and `Diff4SplatPipeline` end to end on tiny random-weight instances of the real
classes (CPU), and their errors on bad input (nothing may be left behind)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.spec import decode_video
from diff4splat import generate as generate_cli
from diff4splat.cli import InputError
from diff4splat.gaussians.io import load_4d
from diff4splat.geometry.trajectories import make_trajectory, write_re10k_txt, write_trajectory_json
from diff4splat.pipelines import Diff4SplatPipeline, outputs
from diff4splat.pipelines.cameras import resolve_cameras
from diff4splat.pipelines.inputs import fit_frames, read_image
from diff4splat.pipelines.jobs import GenerateConfig, TrajectoryOptions, make_job, read_batch
from diff4splat.sampling import SamplingConfig

ROOT = Path(__file__).resolve().parents[1]
PHOTO_H, PHOTO_W = 480, 854  # a photograph's size; 854 is not a multiple of the model's 32-pixel unit
MODEL_H, MODEL_W, FRAMES = 96, 160, 13  # the tiny defaults
STANDARD_PLY = [
    "x",
    "y",
    "z",
    "nx",
    "ny",
    "nz",
    "f_dc_0",
    "f_dc_1",
    "f_dc_2",
    "opacity",
    "scale_0",
    "scale_1",
    "scale_2",
    "rot_0",
    "rot_1",
    "rot_2",
    "rot_3",
]
FAST = ["tiny=true", "sampling.steps=3", "progress=false"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: these tiny models gain nothing from more, and a shared CPU punishes oversubscription."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    y, x = np.mgrid[0:PHOTO_H, 0:PHOTO_W]
    img = np.stack([x * 255 // PHOTO_W, y * 255 // PHOTO_H, (x // 40 + y // 40) % 2 * 200], -1).astype(np.uint8)
    path = tmp_path_factory.mktemp("photo") / "photo.jpg"
    Image.fromarray(img).save(path, quality=90)
    return path


def compose(*overrides: str) -> GenerateConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose(config_name="generate.yaml", overrides=list(overrides))
    GlobalHydra.instance().clear()
    return generate_cli.to_config(cfg)


# --- the command line, end to end -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cli_run(photo, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    parent = tmp_path_factory.mktemp("cli")
    out = parent / "scene_out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "diff4splat.generate",
        "tiny=true",
        f"image={photo}",
        "camera=orbit",
        "prompt=a red boat on a lake",
        f"output_dir={out}",
        "trajectory.strength=0.2",
        "sampling.steps=4",
        "lrdm.num_times=5",
        "seed=3",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_cli_writes_every_output(cli_run):
    out, proc = cli_run
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["scene.safetensors", "ply", "video.mp4", "render.mp4", "novel.mp4", "depth.mp4", "trajectory.png", "meta.json"]
    )
    assert [p.name for p in out.parent.iterdir()] == ["scene_out"]  # the temporary folder was renamed, not left
    assert "UNTRAINED" in proc.stdout + proc.stderr  # the log says so
    scene = load_4d(out / "scene.safetensors")
    assert scene.num_times == 5 and scene.num_gaussians > 0
    for name in ("video", "render", "depth"):  # one frame per trajectory camera, at the model size
        assert decode_video((out / f"{name}.mp4").read_bytes()).shape == (FRAMES, MODEL_H, MODEL_W, 3), name
    assert decode_video((out / "novel.mp4").read_bytes()).shape[0] == FRAMES
    with Image.open(out / "trajectory.png") as im:
        assert im.format == "PNG" and min(im.size) > 100


def test_cli_ply_frames_have_the_standard_layout(cli_run):
    from plyfile import PlyData

    out, _ = cli_run
    scene = load_4d(out / "scene.safetensors")
    plys = sorted((out / "ply").glob("frame_*.ply"))
    assert [p.name for p in plys] == [f"frame_{i:04d}.ply" for i in range(scene.num_times)]
    for i in (0, scene.num_times - 1):
        ply = PlyData.read(str(plys[i]))
        vertex = ply["vertex"]
        assert [p.name for p in vertex.properties] == STANDARD_PLY
        assert vertex.count == scene.num_gaussians
        at = scene.at_index(i)
        np.testing.assert_allclose(np.stack([vertex["x"], vertex["y"], vertex["z"]], 1), at.means.numpy(), atol=1e-6)
        np.testing.assert_allclose(
            np.exp(np.stack([vertex[f"scale_{k}"] for k in range(3)], 1)), at.scales.numpy(), rtol=1e-5
        )
    times = json.loads((out / "ply" / "times.json").read_text())["times"]
    np.testing.assert_allclose(times, scene.times.numpy(), atol=1e-7)


def test_cli_meta_records_inputs_timings_and_the_fitted_trajectory(cli_run, photo):
    out, _ = cli_run
    meta = json.loads((out / "meta.json").read_text())
    assert meta["untrained"] is True and meta["label"].startswith("UNTRAINED")
    assert meta["inputs"]["image"] == str(photo) and meta["inputs"]["prompt"] == "a red boat on a lake"
    assert meta["seed"] == 3 and meta["seeds"]["sampling_noise"] == 3 and meta["sampling"]["steps"] == 4
    assert {"guidance_scale", "scheduler", "flow_shift"} <= set(meta["sampling"]) and "timesteps" not in meta[
        "sampling"
    ]
    stages = ["text", "encode", "sampling", "decode", "lrdm", "render", "write"]
    assert all(meta["timings"][s] > 0 for s in stages), meta["timings"]
    assert meta["timings"]["total"] == pytest.approx(sum(meta["timings"][s] for s in stages), abs=1e-5)
    # concurrent writers: those that need no renders start with the render stage, the others within the write stage
    per_file, t = meta["timings"]["write_files"], meta["timings"]
    assert set(per_file) == {
        "scene.safetensors",
        "ply/",
        "video.mp4",
        "render.mp4",
        "novel.mp4",
        "depth.mp4",
        "trajectory.png",
    }
    assert all(per_file[k] <= t["write"] for k in ("render.mp4", "novel.mp4", "depth.mp4"))
    assert 0 < max(per_file.values()) <= t["render"] + t["write"] + 0.05
    traj = meta["trajectory"]
    assert (traj["height"], traj["width"]) == (MODEL_H, MODEL_W)
    c2w, fx = np.array(traj["c2w"]), np.array(traj["fxfycxcy"])
    assert c2w.shape == (FRAMES, 4, 4) and fx.shape == (FRAMES, 4)
    np.testing.assert_allclose(c2w[0], np.eye(4), atol=1e-6)
    np.testing.assert_allclose(traj["times"], np.linspace(0, 1, FRAMES), atol=1e-6)
    # 854x480 -> cover 160x96: scale 0.2 -> 171x96, 5 columns cropped on the left. The preset's intrinsics (vertical
    # fov 60 deg, square pixels) describe the photo; the crop narrows the view horizontally and keeps the centre ray.
    fy = 0.5 / math.tan(math.radians(30))
    expected = [fy * PHOTO_H / PHOTO_W * 171 / 160, fy, (0.5 * 171 - 5) / 160, 0.5]
    np.testing.assert_allclose(fx[0], expected, rtol=1e-6)
    assert meta["preprocess"]["resized_to"] == [96, 171] and meta["preprocess"]["crop_top_left"] == [0, 5]
    assert meta["lrdm"]["num_gaussians"] == load_4d(out / "scene.safetensors").num_gaussians


# --- the pipeline API ----------------------------------------------------------------------------------------------
def test_pipeline_rgb_lrdm_with_tiny_vae_decoder_is_seeded_and_camera_controlled(photo):
    torch.manual_seed(0)
    pipe = Diff4SplatPipeline.tiny(seed=0, lrdm_encoder="rgb", decoder="tiny_vae")
    cams = resolve_cameras("orbit", TrajectoryOptions(strength=0.3), FRAMES, (PHOTO_H, PHOTO_W))
    image, fx, _ = fit_frames(read_image(photo), cams.fxfycxcy, size=(MODEL_H, MODEL_W), cover=True)

    def run(seed: int, c2w=cams.c2w):
        return pipe(
            image,
            c2w.float(),
            fx.float(),
            cams.times.float(),
            "a boat",
            sampling=SamplingConfig(steps=3, seed=seed),
            lrdm_input_frames=5,
            prune_threshold=0.0,
        )

    g = run(1)
    assert g.latents.shape == (48, 4, MODEL_H // 16, MODEL_W // 16) and g.video.shape == (FRAMES, 3, MODEL_H, MODEL_W)
    assert g.lrdm_frames.tolist() == [0, 3, 6, 9, 12]
    assert g.scene.gaussians.num_gaussians == 5 * (MODEL_H // 8) * (MODEL_W // 8)  # 5 frames, stride 8, no pruning
    torch.testing.assert_close(g.scene.gaussians.times, cams.times.float()[[0, 4, 8, 12]])  # one per latent frame
    torch.testing.assert_close(g.video, pipe.aligner.decode(g.latents[None])[0])  # decoder=tiny_vae
    assert torch.equal(run(1).latents, g.latents)  # a seed gives the same video
    assert not torch.allclose(run(2).latents, g.latents, atol=1e-3)
    static = resolve_cameras("static", TrajectoryOptions(), FRAMES, (PHOTO_H, PHOTO_W))
    assert not torch.allclose(run(1, static.c2w).latents, g.latents, atol=1e-4)  # the cameras reach the video model
    assert g.latents[:, 0].sub(pipe.vae.encode(image[None, None])[0, :, 0]).abs().max() < 1e-5  # TI2V first frame


def test_vae_tiling_option_reaches_the_wan_vae():
    pipe = Diff4SplatPipeline.from_config(compose(*FAST, "low_memory.vae_tiling=true", "low_memory.vae_tile=[64,48]"))
    z = torch.randn(1, 48, 2, MODEL_H // 16, MODEL_W // 16, generator=torch.Generator().manual_seed(0))
    tiled = pipe.decode(z)
    assert pipe.vae.vae.use_tiling and pipe.vae.vae.tile_sample_min_height == 64
    pipe.vae.vae.disable_tiling()
    whole = pipe.decode(z)
    assert tiled.shape == whole.shape == (1, 5, 3, MODEL_H, MODEL_W)
    diff = (tiled - whole).abs()
    assert 0 < float(diff.mean()) < 0.1  # tiles of the same decoder: close, but not the same computation


def test_local_checkpoints_load_through_the_config(tmp_path, photo):
    """Save a tiny pipeline's models in their release formats (diffusers folders, our camera/LRDM/aligner exports),
    load them through ``models.*`` with tiny=false: the loaded pipeline gives the same latents and Gaussians."""
    from safetensors.torch import save_file

    from diff4splat.configs import to_plain

    ref = Diff4SplatPipeline.tiny(seed=5, lrdm_encoder="latent", decoder="tiny_vae")
    root = tmp_path / "Wan-tiny-Diffusers"
    ref.text_encoder.encoder.save_pretrained(str(root / "text_encoder"))
    ref.text_encoder.tokenizer.save_pretrained(str(root / "tokenizer"))
    ref.vae.vae.save_pretrained(str(root / "vae"))
    ref.camera_wan.transformer.save_pretrained(str(root / "transformer"))
    ref.camera_wan.save_camera_weights(tmp_path / "camera.safetensors")
    state = {k: v.contiguous() for k, v in ref.lrdm.state_dict().items()}
    save_file(
        state,
        str(tmp_path / "lrdm.safetensors"),
        metadata={"hparams": json.dumps({"model": to_plain(ref.lrdm.config)})},
    )
    ref.aligner.save(tmp_path / "aligner.safetensors")
    cfg = compose(
        "progress=false",
        "decoder=tiny_vae",
        f"paths.ckpt_root={tmp_path}",
        "models.text_encoder=${paths.ckpt_root}/Wan-tiny-Diffusers",
        "models.vae=${paths.ckpt_root}/Wan-tiny-Diffusers",
        "models.camera_wan.pretrained_path=${paths.ckpt_root}/Wan-tiny-Diffusers",
        "models.camera_wan.camera_weights=${paths.ckpt_root}/camera.safetensors",
        "models.lrdm=${paths.ckpt_root}/lrdm.safetensors",
        "models.aligner=${paths.ckpt_root}/aligner.safetensors",
    )
    pipe = Diff4SplatPipeline.from_config(cfg)
    assert not pipe.untrained and pipe.describe()["lrdm"] == str(tmp_path / "lrdm.safetensors")
    job = make_job(compose(*FAST), photo, "orbit", "a boat", 1, tmp_path / "unused")
    args = (job.image, job.cameras.c2w.float(), job.cameras.fxfycxcy.float(), job.cameras.times.float(), "a boat")
    a, b = (p(*args, sampling=SamplingConfig(steps=2, seed=1)) for p in (ref, pipe))
    torch.testing.assert_close(b.latents, a.latents)
    torch.testing.assert_close(b.scene.gaussians.canonical.means, a.scene.gaussians.canonical.means)
    with pytest.raises(InputError, match=r"models\.camera_wan\.camera_weights=.*absent\.safetensors: not found"):
        Diff4SplatPipeline.from_config(
            replace(
                cfg,
                models=replace(
                    cfg.models,
                    camera_wan=replace(cfg.models.camera_wan, camera_weights=str(tmp_path / "absent.safetensors")),
                ),
            )
        )


# --- batch mode ------------------------------------------------------------------------------------------------------
def test_batch_csv_writes_one_folder_per_row(tmp_path, photo):
    write_trajectory_json(make_trajectory("dolly_in", 21, strength=0.3), tmp_path / "cams.json")
    (tmp_path / "img.jpg").write_bytes(photo.read_bytes())
    csv = tmp_path / "jobs.csv"
    csv.write_text(
        f"image,trajectory,prompt,name,seed\n{photo},spiral,first scene,a,\nimg.jpg,cams.json,second scene,,7\n"
    )
    out = tmp_path / "out"
    result = generate_cli.generate(compose(*FAST, f"batch={csv}", f"output_dir={out}", "render.novel_frames=3"))
    assert result == out
    assert sorted(p.name for p in out.iterdir()) == ["a", "batch.json", "img"]
    a, b = (json.loads((out / n / "meta.json").read_text()) for n in ("a", "img"))
    assert (a["inputs"]["prompt"], a["seed"], a["inputs"]["cameras"]["preset"]) == ("first scene", 0, "spiral")
    assert (b["inputs"]["prompt"], b["seed"]) == ("second scene", 7)
    assert b["inputs"]["cameras"]["file_frames"] == 21 and len(b["inputs"]["cameras"]["frame_indices"]) == FRAMES
    assert json.loads((out / "batch.json").read_text())["jobs"] == ["a", "img"]
    assert decode_video((out / "a" / "novel.mp4").read_bytes()).shape[0] == 3

    bad = tmp_path / "bad.csv"
    bad.write_text(f"image,prompt\n{photo},ok\nmissing.jpg,no image\n")
    with pytest.raises(InputError, match=r"bad\.csv: line 3: image=.*missing\.jpg: no such file"):
        generate_cli.generate(compose(*FAST, f"batch={bad}", f"output_dir={tmp_path / 'out2'}"))
    assert not (tmp_path / "out2").exists()  # checked before anything was generated
    bad.write_text(f"image,name\n{photo},../escape\n")
    with pytest.raises(InputError, match=r"bad\.csv: line 2: field name is '\.\./escape'; expected a plain folder"):
        generate_cli.generate(compose(*FAST, f"batch={bad}", f"output_dir={tmp_path / 'out2'}"))


def test_batch_folder_lists_its_images(tmp_path, photo):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("b.jpg", "a.png"):
        Image.open(photo).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    jobs = read_batch(compose(*FAST, f"batch={folder}", "prompt=p", "camera=pan_left"), tmp_path / "o")
    assert [(j.target.name, j.camera_spec, j.prompt) for j in jobs] == [("a", "pan_left", "p"), ("b", "pan_left", "p")]
    assert all(j.image.shape == (3, MODEL_H, MODEL_W) for j in jobs)


# --- bad input -------------------------------------------------------------------------------------------------------
def _trajectory_files(tmp: Path) -> dict[str, Path]:
    files = {
        "broken.json": tmp / "broken.json",
        "nan.json": tmp / "nan.json",
        "empty.json": tmp / "empty.json",
        "url_only.txt": tmp / "url_only.txt",
        "short.txt": tmp / "short.txt",
    }
    files["broken.json"].write_text('{"format": "diff4splat-trajectory", "frames": [')
    traj = make_trajectory("orbit", FRAMES, strength=0.2)
    traj.c2w[3, 0, 3] = float("nan")
    write_trajectory_json(traj, files["nan.json"])
    files["empty.json"].write_text('{"format": "diff4splat-trajectory", "version": 1, "frames": []}')
    files["url_only.txt"].write_text("https://www.youtube.com/watch?v=x\n")
    write_re10k_txt(make_trajectory("forward", 7), files["short.txt"])
    return files


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["image={tmp}/nope.jpg"], r"image=.*nope\.jpg: no such file; expected an image file \(\.png"),
        (["image={tmp}/garbage.jpg"], r"image=.*garbage\.jpg: unreadable image"),
        (
            ["camera={tmp}/broken.json"],
            r"camera=.*broken\.json: unreadable trajectory file .*invalid JSON.*expected a preset",
        ),
        (
            ["camera={tmp}/nan.json"],
            r"camera=.*nan\.json: field c2w, frame 3: non-finite values \(NaN or inf\); expected a finite 4x4",
        ),
        (
            ["camera={tmp}/empty.json"],
            r"camera=.*empty\.json: unreadable trajectory file .*'frames' must be a non-empty list",
        ),
        (["camera={tmp}/url_only.txt"], r"camera=.*url_only\.txt: .*no frame lines"),
        (["camera={tmp}/short.txt"], r"camera=.*short\.txt: 7 cameras, fewer than trajectory\.num_frames=13"),
        (["camera={tmp}/nope.json"], r"camera=.*nope\.json: no such file"),
        (["camera=wobble"], r"camera=wobble: not a trajectory preset .*expected a preset name \(arc_left"),
        (["trajectory.num_frames=0"], r"trajectory\.num_frames: the video model makes 1 \+ 4k frames .* got 0"),
        (["trajectory.num_frames=10"], r"trajectory\.num_frames: .* got 10"),
        (["height=100"], r"height=100 width=160: expected positive multiples of 32"),
        (["output_dir=null"], r"output_dir: required"),
        (["tiny=false"], r"models\.text_encoder=.*: not found; expected a diffusers root"),
    ],
)
def test_bad_input_names_file_field_and_form_and_leaves_nothing(tmp_path, photo, overrides, message):
    _trajectory_files(tmp_path)
    (tmp_path / "garbage.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    before = sorted(p.name for p in tmp_path.iterdir())
    out = tmp_path / "out"
    args = [*FAST, f"image={photo}", f"output_dir={out}", f"paths.ckpt_root={tmp_path}/ckpt"]
    cfg = compose(*args, *(o.format(tmp=tmp_path) for o in overrides))
    with pytest.raises(InputError, match=message):
        generate_cli.generate(cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output folder, no temporary folder


def test_cli_error_is_one_line_and_exit_code_2(tmp_path, capsys):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"image": str(tmp_path / "none.png"), "output_dir": str(tmp_path / "o"), "tiny": True})
    from diff4splat.cli import run_cli

    assert run_cli(generate_cli.run, cfg) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: image=") and "no such file" in err and err.count("\n") == 1
    # typed config: a wrong type names the field (a misspelt key already fails in Hydra's composition)
    with pytest.raises(ValueError, match=r"generate\.sampling\.steps: expected an integer, got 'many'"):
        compose("sampling.steps=many")
    assert not (tmp_path / "o").exists()


def test_failure_while_writing_leaves_no_partial_folder(tmp_path, photo, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(outputs, "write_video", disk_full)  # after scene.safetensors and ply/ were written
    out = tmp_path / "new" / "deeper" / "out"
    with pytest.raises(OSError, match="No space left"):
        generate_cli.generate(compose(*FAST, f"image={photo}", f"output_dir={out}", "render.novel_frames=2"))
    assert list(tmp_path.iterdir()) == []  # neither the temporary folder nor the parents it made


def test_overwrite_replaces_an_earlier_output(tmp_path, photo):
    out = tmp_path / "out"
    args = [*FAST, f"image={photo}", f"output_dir={out}", "render.novel_frames=2", "camera=static"]
    generate_cli.generate(compose(*args))
    with pytest.raises(InputError, match="not empty; pass overwrite=true"):
        generate_cli.generate(compose(*FAST, f"image={photo}", f"output_dir={out}"))
    (out / "video.mp4").write_bytes(b"stale")
    generate_cli.generate(compose(*args, "overwrite=true"))
    assert (out / "video.mp4").read_bytes() != b"stale" and (out / "meta.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.gpu
def test_offload_gives_the_same_scene_and_frees_the_gpu(photo):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    job_cfg = compose(*FAST, "device=cuda", f"image={photo}", "output_dir=unused")
    job = make_job(job_cfg, photo, "orbit", "p", 0, Path("unused"))
    results = []
    # the same kernels in both runs (cuDNN autotuning may pick others; random weights amplify the differences)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # full fp32 in both
    for offload in (False, True):
        pipe = Diff4SplatPipeline.tiny(seed=0, device="cuda", offload=offload)
        g = pipe(
            job.image,
            job.cameras.c2w.float(),
            job.cameras.fxfycxcy.float(),
            job.cameras.times.float(),
            "p",
            sampling=SamplingConfig(steps=3),
        )
        results.append(g)
        on_gpu = [m for m in (pipe.camera_wan, pipe.vae, pipe.lrdm, pipe.text_encoder) if next(m.parameters()).is_cuda]
        assert len(on_gpu) == (0 if offload else 4)
    print("max |latents offload - resident|:", float((results[0].latents - results[1].latents).abs().max()))
    torch.testing.assert_close(results[0].latents, results[1].latents, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(
        results[0].scene.gaussians.canonical.means, results[1].scene.gaussians.canonical.means, rtol=1e-4, atol=1e-4
    )


@pytest.mark.gpu
def test_compiled_blocks_give_the_eager_latents(photo):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    job_cfg = compose(*FAST, "device=cuda", f"image={photo}", "output_dir=unused")
    job = make_job(job_cfg, photo, "orbit", "p", 0, Path("unused"))
    pipe = Diff4SplatPipeline.tiny(seed=0, device="cuda")
    args = (job.image, job.cameras.c2w.float(), job.cameras.fxfycxcy.float(), job.cameras.times.float(), "p")
    eager = pipe(*args, sampling=SamplingConfig(steps=3)).latents
    blocks = list(pipe.camera_wan.transformer.blocks)
    forwards = [b.forward for b in blocks]
    pipe.compile()
    assert all(b.forward is not f for b, f in zip(blocks, forwards, strict=True))  # compiled in place
    from torch._dynamo.utils import counters

    counters.clear()
    compiled = pipe(*args, sampling=SamplingConfig(steps=3)).latents
    assert counters["stats"]["unique_graphs"] >= 1  # frames really were compiled (not left eager)
    keys = set(pipe.camera_wan.state_dict())
    assert not any("_orig_mod" in k for k in keys)  # weights and keys unchanged: trained files still load
    torch.testing.assert_close(compiled, eager, rtol=2e-3, atol=2e-3)
