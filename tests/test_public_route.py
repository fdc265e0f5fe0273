"""The public-weights route (`diff4splat.pipelines.public`): ``layout=public`` runs the Wan2.2-Fun camera release,
the Wan VAE or TAEHV and the MoVieS reconstructor, here as tiny random-weight instances of those layouts (CPU): the
command writes a complete output folder from a real photo and a real RealEstate10K pose file, released-layout files
under ``$CKPT_ROOT`` load through the config and give the in-memory models' scene, and meta.json names each weight
file with its licence."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from test_generate import compose, one_thread  # noqa: F401 - one_thread: an autouse fixture (one CPU thread)

from datamodules.spec import decode_video
from diff4splat import generate as generate_cli
from diff4splat.cli import InputError
from diff4splat.gaussians.io import load_4d
from diff4splat.models.movies import CHECKPOINT_PREFIX
from diff4splat.pipelines import Diff4SplatPipeline, public
from diff4splat.pipelines.jobs import make_job
from diff4splat.sampling import SamplingConfig

FIXTURES = Path(__file__).resolve().parent / "fixtures"
PHOTO = FIXTURES / "tartanair" / "image_left" / "000009_left.png"  # a real 640x480 photograph
POSES = FIXTURES / "re10k" / "pose_files" / "0bf152ef84195293.txt"  # 16 RealEstate10K cameras
MODEL_H, MODEL_W, FRAMES = 96, 160, 13
FAST = [
    "tiny=true",
    "layout=public",
    "sampling.steps=2",
    "progress=false",
    "render.novel_frames=3",
    "lrdm.input_frames=4",
]


def test_tiny_public_route_writes_a_complete_folder_from_a_photo_and_a_pose_file(tmp_path):
    out = tmp_path / "scene"
    cfg = compose(*FAST, f"image={PHOTO}", f"camera={POSES}", "decoder=tiny_vae", f"output_dir={out}", "prompt=a room")
    assert (cfg.layout, cfg.sampling.scheduler, cfg.sampling.guidance_scale) == ("public", "euler", 6.0)
    assert generate_cli.generate(cfg) == out
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["scene.safetensors", "ply", "video.mp4", "render.mp4", "novel.mp4", "depth.mp4", "trajectory.png", "meta.json"]
    )
    for name in ("video", "render", "depth"):
        assert decode_video((out / f"{name}.mp4").read_bytes()).shape == (FRAMES, MODEL_H, MODEL_W, 3), name
    scene = load_4d(out / "scene.safetensors")
    meta = json.loads((out / "meta.json").read_text())
    assert scene.num_gaussians == meta["lrdm"]["num_gaussians"] > 0 and scene.num_times == 4
    models = meta["models"]
    assert (models["layout"], models["lrdm_encoder"], models["decoder"]) == ("public", "vggt", "tiny_vae")
    assert [w["role"] for w in models["weights"]] == ["text_encoder", "vae", "camera_wan", "lrdm", "aligner"]
    assert "Wan2.2-Fun-5B-Control-Camera" in models["weights"][2]["weights"]
    assert meta["inputs"]["cameras"]["file_frames"] == 16 and meta["untrained"] is True


def test_distilled_sampling_with_the_fun_model_is_one_error_and_writes_nothing(tmp_path):
    out = tmp_path / "scene"
    cfg = compose(*FAST, f"image={PHOTO}", f"camera={POSES}", f"output_dir={out}", "sampling.mode=distilled")
    with pytest.raises(InputError, match=r"^sampling\.mode=distilled: the Wan2\.2-Fun camera model is not a distilled"):
        generate_cli.generate(cfg)
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def released_root(tmp_path_factory) -> tuple[Path, Diff4SplatPipeline]:
    """A tiny public pipeline's models written as the releases ship them, under one $CKPT_ROOT."""
    ref = public.tiny_public(Diff4SplatPipeline, seed=4)
    root = tmp_path_factory.mktemp("ckpt")
    wan = root / "Wan2.2-TI2V-5B-Diffusers"
    ref.text_encoder.encoder.save_pretrained(str(wan / "text_encoder"))
    ref.text_encoder.tokenizer.save_pretrained(str(wan / "tokenizer"))
    ref.vae.vae.save_pretrained(str(wan / "vae"))
    public.write_fun_release(ref.camera_wan, root / public.FUN_RELEASE)
    (root / "MoVieS").mkdir()
    movies = {CHECKPOINT_PREFIX + k: v.contiguous() for k, v in ref.lrdm.backbone.state_dict().items()}
    save_file(movies, str(root / "MoVieS" / "movies_ckpt.safetensors"))
    return root, ref


def test_released_layouts_load_through_layout_public(released_root, tmp_path):
    root, ref = released_root
    cfg = compose("layout=public", "progress=false", f"paths.ckpt_root={root}")
    pipe = Diff4SplatPipeline.from_config(cfg)
    assert not pipe.untrained and pipe.camera_wan.camera.injection == "fun" and pipe.lrdm.config.encoder == "vggt"
    weights = {w["role"]: w for w in pipe.describe()["weights"]}
    assert weights["camera_wan"]["path"] == str(root / public.FUN_RELEASE / "diffusion_pytorch_model.safetensors")
    assert weights["camera_wan"]["licence"].startswith("Apache-2.0") and weights["vae"]["licence"].startswith("Apache")
    assert weights["lrdm"]["weights"] == "MoVieS (VGGSplaT)" and weights["lrdm"]["licence"].startswith("MIT")
    job = make_job(compose(*FAST), PHOTO, str(POSES), "a room", 1, tmp_path / "unused")
    args = (job.image, job.cameras.c2w.float(), job.cameras.fxfycxcy.float(), job.cameras.times.float(), "a room")
    sampling = SamplingConfig(scheduler="euler", steps=2, guidance_scale=6.0, seed=1)
    a, b = (p(*args, sampling=sampling, prune_threshold=0.0) for p in (ref, pipe))
    torch.testing.assert_close(b.latents, a.latents)
    torch.testing.assert_close(b.scene.gaussians.canonical.means, a.scene.gaussians.canonical.means)
    # the first latent frame is the image's (the mask's known frame); the cameras reach the video
    first = pipe.vae.encode(job.image[None, None])[0, :, 0]
    assert (a.latents[:, 0] - first).abs().max() < 1e-5
    still = pipe(job.image, torch.eye(4).expand(FRAMES, 4, 4), *args[2:], sampling=sampling)
    assert not torch.allclose(still.latents[:, 1:], a.latents[:, 1:], atol=1e-4)


def test_camera_wan_path_and_its_errors(released_root, tmp_path):
    root, _ = released_root
    cfg = public.resolve_config(compose(f"models.camera_wan={root / public.FUN_RELEASE}"))
    cw = cfg.models.camera_wan
    assert (cw.camera_injection, cw.init, cw.arch_overrides["in_channels"]) == ("fun", "original", 100)
    with pytest.raises(InputError, match=r"^models\.camera_wan=.*absent: not found; expected the Wan2\.2-Fun"):
        public.resolve_config(compose(f"models.camera_wan={tmp_path / 'absent'}"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"^models\.camera_wan=.*empty: .*no diffusion_pytorch_model"):
        public.resolve_config(compose(f"models.camera_wan={tmp_path / 'empty'}"))


def test_camera_wan_path_to_our_camera_weights_stands_for_their_config(tmp_path):
    """models.camera_wan=<our camera weights .safetensors>: the config in its metadata, the file as camera_weights."""
    ours = Diff4SplatPipeline.tiny(seed=2).camera_wan
    path = ours.save_camera_weights(tmp_path / "camera.safetensors")
    cw = public.resolve_camera_wan(str(path))
    assert cw == replace(ours.config, camera_weights=str(path)) and cw.camera_injection == "add"
    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"), metadata={"format": "something/1"})
    with pytest.raises(InputError, match=r"other\.safetensors: metadata format 'something/1', no CameraWan config"):
        public.resolve_camera_wan(str(tmp_path / "other.safetensors"))


def test_memory_estimate_counts_the_gaussians_movies_makes(released_root):
    """A vggt LRDM (MoVieS) makes one Gaussian per pixel of the 13 frames it reads at its 518-pixel size, not one per
    pixel of every frame: the Fun model's native 704x1280x121 fits an 80 GB GPU (the real weights, ~28 GiB in bf16,
    come on top of the activations estimated here from the tiny files)."""
    from diff4splat.pipelines.memory import GIB, Size, describe_models, estimate_bytes

    root, _ = released_root
    models = describe_models(public.resolve_config(compose("layout=public", f"paths.ckpt_root={root}")), "cuda")
    assert models.lrdm_frames == 13 and models.gaussian_stride == 1
    native = Size(121, 704, 1280, 31, 121)
    assert estimate_bytes(native, models) < 40 * GIB  # ~560 GiB if all 121 frames emitted Gaussians
    every_frame = estimate_bytes(native, replace(models, lrdm_frames=None))
    assert every_frame > 10 * estimate_bytes(native, models)


def test_the_fun_model_feeds_our_latent_lrdm_too(released_root, tmp_path):
    """models.lrdm=<our latent LRDM> with the Fun camera model: the LRDM reads the Fun model's Wan2.2 latents."""
    from diff4splat.models.lrdm import LRDM, lrdm_preset
    from diff4splat.pipelines.generation import TINY_LRDM

    _, ref = released_root
    lrdm = LRDM(lrdm_preset("tiny", encoder="latent", **TINY_LRDM))
    pipe = Diff4SplatPipeline(ref.text_encoder, ref.camera_wan, ref.vae, lrdm)
    job = make_job(compose(*FAST), PHOTO, str(POSES), "a room", 1, tmp_path / "unused")
    cams = job.cameras
    g = pipe(
        job.image,
        cams.c2w.float(),
        cams.fxfycxcy.float(),
        cams.times.float(),
        "a room",
        sampling=SamplingConfig(scheduler="euler", steps=2, seed=1),
        prune_threshold=0.0,
    )
    assert g.latents.shape == (48, 4, MODEL_H // 16, MODEL_W // 16)
    assert g.scene.gaussians.num_gaussians == FRAMES * (MODEL_H // 8) * (MODEL_W // 8)  # stride 8, every frame
