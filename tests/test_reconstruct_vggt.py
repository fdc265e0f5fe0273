"""The released reconstructor through the CLIs: ``reconstruct --weights <a MoVieS-layout checkpoint>`` on a real
RealEstate10K video with its poses and without them (VGGT's camera head), ``preprocess`` estimating cameras,
``evaluate clips`` and the export by ``checkpoints convert``. The checkpoints are tiny seeded models saved in the
released layouts (MoVieS: ``backbone.*`` tensors and no metadata; VGGT: a ``torch.save`` state dict)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

from diff4splat import checkpoints, evaluate, preprocess, reconstruct
from diff4splat.cli import InputError
from diff4splat.configs import to_dataclass
from diff4splat.gaussians.io import load_4d
from diff4splat.geometry.rotations import quat_to_matrix
from diff4splat.models.dpt import DPTConfig
from diff4splat.models.lrdm import LRDM, LRDMConfig
from diff4splat.models.movies import pose_decoding, pose_encoding
from diff4splat.models.vggt import VGGT, CameraHeadConfig, VGGTConfig
from diff4splat.pipelines.cameras import read_cameras
from diff4splat.pipelines.inputs import read_frames
from diff4splat.pipelines.poses import estimate_cameras, load_camera_estimator
from diff4splat.pipelines.reconstruction import load_lrdm

ROOT = Path(__file__).resolve().parents[1]
CLIP = "0bf152ef84195293"
VIDEO = ROOT / "tests" / "fixtures" / "re10k" / "videos" / f"{CLIP}.mp4"
POSES = ROOT / "tests" / "fixtures" / "re10k" / "pose_files" / f"{CLIP}.txt"


def tiny_lrdm_config() -> LRDMConfig:
    raw = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / "lrdm_vggt_tiny.yaml"))
    return to_dataclass(LRDMConfig, raw, "lrdm_vggt_tiny")


@pytest.fixture(scope="module")
def movies_ckpt(tmp_path_factory) -> Path:
    """A seeded tiny VGGSplaT saved as movies_ckpt.safetensors is: the checkpoint's keys, no metadata."""
    torch.manual_seed(0)
    model = LRDM(tiny_lrdm_config())
    path = tmp_path_factory.mktemp("movies") / "movies_ckpt.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def tiny_vggt() -> VGGT:
    """VGGT at the tiny LRDM's sizes (its encoder and aggregator, a 1-block camera head, depth and point heads)."""
    v = tiny_lrdm_config().vggt
    dpt = {k: getattr(v.depth_head, k) for k in ("dim_in", "features", "out_channels", "layers", "head_features")}
    return VGGT(
        VGGTConfig(
            encoder=v.encoder,
            aggregator=type(v.aggregator)(**{**v.aggregator.__dict__, "extra_dim": 0, "time_dim": 0}),
            camera_head=CameraHeadConfig(dim_in=128, trunk_depth=1, num_heads=4),
            depth_head=DPTConfig(**dpt, output_dim=2, activation="exp"),
            point_head=DPTConfig(**dpt, output_dim=4, activation="inv_log"),
        )
    )


@pytest.fixture(scope="module")
def vggt_pt(tmp_path_factory) -> Path:
    """A seeded tiny VGGT as facebook/VGGT-1B's model.pt is: a plain torch.save state dict. Its camera head's last
    layer is scaled down and biased so the 4 refinements add up to fields of view near 1.2 rad (a random head
    predicts ReLU(noise): zero fields of view, i.e. no camera, half the time)."""
    torch.manual_seed(1)
    model = tiny_vggt()
    with torch.no_grad():
        last = model.camera_head.pose_branch.fc2
        last.weight.mul_(0.01)
        last.bias[7:].fill_(0.3)
    path = tmp_path_factory.mktemp("vggt") / "model.pt"
    torch.save(model.state_dict(), path)
    return path


def outputs_ok(out: Path, frames: int, size: tuple[int, int]) -> None:
    """The usual reconstruct outputs, with one Gaussian per pixel of every frame (at the model's 14-pixel grid)."""
    for name in ("scene.safetensors", "input.mp4", "render_input_cameras.mp4", "render_fixed_camera.mp4", "depth.mp4"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    scene = load_4d(out / "scene.safetensors")
    assert scene.num_times == frames and scene.time_varying_appearance
    assert 0.9 * frames * size[0] * size[1] < scene.num_gaussians <= frames * size[0] * size[1]
    assert len(list((out / "ply").glob("*.ply"))) == frames


def test_reconstruct_with_a_movies_checkpoint_on_a_real_video_with_poses(tmp_path, movies_ckpt):
    out = tmp_path / "with_poses"
    args = ["--weights", str(movies_ckpt), "--input", str(VIDEO), "--cameras", str(POSES), "--out", str(out)]
    assert reconstruct.main([*args, "--num-frames", "4", "--device", "cpu"]) == 0
    # 384x256 at the tiny model's native long side (4 x 14 = 56): 56 x 37.3 -> 56 x 42 (3 whole patches)
    outputs_ok(out, 4, (42, 56))


def test_reconstruct_without_poses_estimates_them_with_vggt(tmp_path, movies_ckpt, vggt_pt):
    out = tmp_path / "without_poses"
    args = ["--weights", str(movies_ckpt), "--input", str(VIDEO), "--out", str(out), "--num-frames", "4"]
    with pytest.raises(InputError, match="--pose-weights with facebook/VGGT-1B's model.pt"):
        reconstruct.run(reconstruct.parse_args([*args, "--device", "cpu"]))
    assert reconstruct.main([*args, "--pose-weights", str(vggt_pt), "--device", "cpu"]) == 0
    outputs_ok(out, 4, (42, 56))
    with pytest.raises(InputError, match="has no camera head"):
        load_camera_estimator(movies_ckpt, "--pose-weights")


def test_preprocess_estimates_consistent_cameras_from_a_video(tmp_path, vggt_pt, movies_ckpt):
    npz = tmp_path / "scene.npz"
    with pytest.raises(InputError, match="--weights with facebook/VGGT-1B's model.pt"):
        preprocess.run(preprocess.parse_args(["--images", str(VIDEO), "--out", str(npz)]))
    args = ["--images", str(VIDEO), "--weights", str(vggt_pt), "--device", "cpu", "--out", str(npz)]
    assert preprocess.main(args) == 0
    with np.load(npz) as d:
        c2w, fx, images = torch.from_numpy(d["C2W"]), torch.from_numpy(d["fxfycxcy"]), d["images"]
    frames = read_frames(VIDEO)
    assert images.shape == tuple(frames.shape) and c2w.shape == (16, 4, 4) and fx.shape == (16, 4)
    torch.testing.assert_close(c2w[0], torch.eye(4), atol=1e-6, rtol=0)  # canonical
    rot = c2w[:, :3, :3]
    torch.testing.assert_close(rot @ rot.transpose(1, 2), torch.eye(3).expand(16, 3, 3), atol=1e-5, rtol=0)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(16), atol=1e-5)
    assert torch.all(fx[:, :2] > 0) and torch.allclose(fx[:, 2:], torch.full((16, 2), 0.5))
    # the same cameras as decoding VGGT's raw pose encoding directly (then canonical and scaled)
    model = load_camera_estimator(vggt_pt)
    again_c2w, again_fx = estimate_cameras(model, frames)
    torch.testing.assert_close(again_c2w, c2w, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again_fx, fx, atol=1e-6, rtol=1e-6)
    with torch.no_grad():
        small = torch.nn.functional.interpolate(frames, size=(42, 56), mode="bicubic", antialias=True).clamp(0, 1)
        raw = model(small[None])
    raw_c2w, raw_fx = pose_decoding(raw["pose_enc"][0])
    torch.testing.assert_close(raw_fx, fx, atol=1e-5, rtol=1e-5)
    # rotations relative to camera 0 are VGGT's (the scale normalisation changes translations only)
    rel = raw_c2w[:1, :3, :3].transpose(1, 2) @ raw_c2w[:, :3, :3]
    torch.testing.assert_close(rel, rot, atol=1e-5, rtol=0)
    # and reconstruct reads the .npz
    out = tmp_path / "from_npz"
    assert (
        reconstruct.main(["--weights", str(movies_ckpt), "--input", str(npz), "--out", str(out), "--num-frames", "3"])
        == 0
    )
    outputs_ok(out, 3, (42, 56))


def test_vggt_pose_encoding_round_trip_on_real_re10k_cameras():
    """The conversion inverts pose_encoding on real cameras (RealEstate10K's, canonical)."""
    c2w, fx, _ = read_cameras(POSES)
    c2w = c2w.float()
    enc = pose_encoding(c2w, fx.float())
    back_c2w, back_fx = pose_decoding(enc)
    torch.testing.assert_close(back_c2w, c2w, atol=1e-5, rtol=0)
    torch.testing.assert_close(back_fx[:, :2], fx[:, :2].float(), atol=1e-5, rtol=0)
    q = enc[:, 3:7][:, [3, 0, 1, 2]]  # xyzw -> wxyz
    torch.testing.assert_close(quat_to_matrix(q), c2w[:, :3, :3].transpose(1, 2), atol=1e-5, rtol=0)


def test_convert_exports_our_format_and_evaluate_clips_runs(tmp_path, movies_ckpt):
    out = tmp_path / "movies.safetensors"
    assert checkpoints.main(["convert", str(movies_ckpt), str(out)]) == 0
    exported, released = load_lrdm(out), load_lrdm(movies_ckpt)
    assert exported.config == released.config and exported.config.encoder == "vggt"
    for k, v in released.state_dict().items():
        assert torch.equal(exported.state_dict()[k], v), k
    from datamodules import synthetic

    shards = tmp_path / "shards"
    synthetic.main(["--out", str(shards), "--clips", "2", "--frames", "9", "--size", "28", "--format", "png"])
    res = tmp_path / "res"
    args = ["clips", "--weights", str(out), "--shards", str(shards), "--resolution", "28", "--num-input", "3"]
    assert evaluate.main([*args, "--num-output", "2", "--device", "cpu", "--out", str(res), "--no-lpips"]) == 0
    summary = json.loads((res / "summary.json").read_text())
    assert summary["count"] == 2 and summary["skipped"] == 0
    assert 0 < summary["mean"]["psnr"] < 60


@pytest.mark.parametrize("height,width", [(1080, 1920), (1920, 1080), (1000, 1000), (256, 384), (37, 91), (480, 854)])
def test_frames_fit_the_14_pixel_grid_with_exact_intrinsics(height, width):
    """Any aspect ratio: the long side at VGGT-1B's 518, both sides whole 14-pixel patches, and each pixel keeps its
    ray (a world point projects to the same place relative to the frame before and after, with the new intrinsics;
    also through a crop when a size that is not a multiple of 14 is asked for)."""
    from diff4splat.geometry.cameras import project_points
    from diff4splat.pipelines.inputs import fit_frames
    from diff4splat.pipelines.reconstruction import native_size

    with torch.device("meta"):
        model = LRDM(to_dataclass(LRDMConfig, OmegaConf.load(ROOT / "conf" / "model" / "lrdm_vggt_1b.yaml"), "1b"))
    size = native_size(model, height, width)
    assert max(size) == 518 and size[0] % 14 == 0 and size[1] % 14 == 0
    assert abs(size[0] / size[1] - height / width) <= 7 / min(size)  # at most half a patch of stretch
    fx = torch.tensor([[0.8, 0.8 * width / height, 0.47, 0.52]])
    c2w = torch.eye(4)[None]
    point = torch.tensor([[[0.3, -0.2, 2.0]]])
    before = project_points(point, c2w, fx, height, width).uv[0, 0] / torch.tensor([width, height])
    for ask in (size, (size[0] + 5, size[1] + 9)):  # native, then a size that needs a crop to whole patches
        images = torch.rand(1, 3, height, width)
        out, fx_out, fit = fit_frames(images, fx, 14, ask)
        h, w = out.shape[-2:]
        assert h % 14 == 0 and w % 14 == 0 and (h, w) == tuple(fit["model_size"])
        top, left = fit["crop_top_left"]
        rh, rw = fit["resized_to"]
        uv = project_points(point, c2w, fx_out, h, w).uv[0, 0]
        expected = before * torch.tensor([rw, rh]) - torch.tensor([left, top])  # resize, then the crop's offset
        torch.testing.assert_close(uv, expected, atol=1e-3, rtol=0)


def test_generation_reads_decoded_frames_with_a_vggt_lrdm():
    """The generation pipeline with the released reconstructor: the decoded video (96 x 160, a Wan size that is not a
    multiple of 14) is read at the LRDM's own size (28 x 56 at the tiny model's 56-pixel native long side), one
    Gaussian per pixel of each frame it reads, rendered back at the video's size."""
    from diff4splat.geometry.trajectories import make_trajectory
    from diff4splat.pipelines.generation import Diff4SplatPipeline
    from diff4splat.sampling import SamplingConfig

    tiny = Diff4SplatPipeline.tiny(seed=0, lrdm_encoder="rgb", decoder="tiny_vae")
    torch.manual_seed(0)
    lrdm = LRDM(tiny_lrdm_config())
    pipe = Diff4SplatPipeline(tiny.text_encoder, tiny.camera_wan, tiny.vae, lrdm, tiny.aligner, decoder="tiny_vae")
    assert pipe.size_multiple == 32  # the video model's unit only
    traj = make_trajectory("orbit", 5, strength=0.3)
    image = torch.rand(3, 96, 160)
    g = pipe(
        image,
        traj.c2w.float(),
        traj.fxfycxcy.float(),
        torch.linspace(0, 1, 5),
        "a boat",
        sampling=SamplingConfig(steps=2, seed=0),
        lrdm_input_frames=3,
        prune_threshold=0.0,
    )
    assert g.video.shape == (5, 3, 96, 160) and g.lrdm_frames.tolist() == [0, 2, 4]
    assert g.scene.gaussians.num_gaussians == 3 * 28 * 56 and g.scene.image_size == (96, 160)
    assert g.scene.gaussians.time_varying_appearance
    rgb, _ = pipe.render(g.scene, g.scene.c2w[:2], g.scene.fxfycxcy[:2], g.scene.input_times[:2])
    assert rgb.shape == (2, 3, 96, 160) and torch.isfinite(rgb).all()
