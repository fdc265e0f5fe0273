"""`preprocess` and `reconstruct` end to end with a tiny exported LRDM, and their errors on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from datamodules.spec import decode_video
from diff4splat import preprocess, reconstruct
from diff4splat.cli import InputError
from diff4splat.configs import to_plain
from diff4splat.gaussians.io import load_4d, load_ply
from diff4splat.geometry.trajectories import make_trajectory, write_trajectory_json
from diff4splat.models.lrdm import LRDM, lrdm_preset
from diff4splat.pipelines.inputs import fit_frames
from diff4splat.pipelines.reconstruction import load_lrdm

F, H, W = 5, 36, 44  # not multiples of the patch size: reconstruct crops to 32 x 40


@pytest.fixture
def weights(tmp_path) -> Path:
    torch.manual_seed(0)
    cfg = lrdm_preset("tiny", dim=48, depth=2, num_heads=4, decoder_channels=8)
    model = LRDM(cfg)
    path = tmp_path / "lrdm.safetensors"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"hparams": json.dumps({"model": to_plain(cfg)})})
    return path


@pytest.fixture
def frames_and_cameras(tmp_path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(F):
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    traj = make_trajectory("orbit", F, strength=0.3)
    cams = tmp_path / "cams.json"
    write_trajectory_json(traj, cams)
    return folder, cams


def test_load_lrdm_round_trip(weights):
    model = load_lrdm(weights)
    assert model.config.dim == 48 and model.config.depth == 2
    torch.manual_seed(0)
    ref = LRDM(lrdm_preset("tiny", dim=48, depth=2, num_heads=4, decoder_channels=8))
    for (k, a), (_, b) in zip(model.state_dict().items(), ref.state_dict().items()):
        torch.testing.assert_close(a, b, msg=k)


def test_preprocess_then_reconstruct(tmp_path, weights, frames_and_cameras):
    folder, cams = frames_and_cameras
    npz = tmp_path / "scene.npz"
    assert preprocess.main(["--images", str(folder), "--poses", str(cams), "--out", str(npz)]) == 0
    with np.load(npz) as d:
        assert d["images"].shape == (F, 3, H, W) and d["images"].dtype == np.float32
        np.testing.assert_allclose(d["C2W"][0], np.eye(4), atol=1e-6)  # canonical
        np.testing.assert_allclose(d["timestep"], np.linspace(0, 1, F), atol=1e-7)
    out = tmp_path / "out"
    assert (
        reconstruct.main(
            [
                "--weights",
                str(weights),
                "--input",
                str(npz),
                "--out",
                str(out),
                "--device",
                "cpu",
                "--num-times",
                "3",
                "--prune",
                "0",
            ]
        )
        == 0
    )
    scene = load_4d(out / "scene.safetensors")
    assert scene.num_times == 3 and scene.num_gaussians == F * 32 * 40  # cropped to multiples of 8, no pruning
    plys = sorted((out / "ply").glob("frame_*.ply"))
    assert len(plys) == 3
    torch.testing.assert_close(load_ply(plys[0]).means, scene.at_index(0).means, atol=1e-6, rtol=0)
    for name, n in [
        ("input", F),
        ("render_input_cameras", F),
        ("render_fixed_camera", 3),
        ("render_fixed_time", F),
        ("depth", F),
    ]:
        video = decode_video((out / f"{name}.mp4").read_bytes())
        assert video.shape[0] == n and video.shape[1:3] == (32, 40), name


def test_reconstruct_from_frames_and_re10k_txt_errors(tmp_path, weights, frames_and_cameras):
    folder, _ = frames_and_cameras
    bad = tmp_path / "cams.txt"
    traj = make_trajectory("dolly_in", F + 2)
    from diff4splat.geometry.trajectories import write_re10k_txt

    write_re10k_txt(traj, bad)
    with pytest.raises(InputError, match=r"cams.txt: 7 cameras for 5 frames"):
        reconstruct.run(
            reconstruct.parse_args(
                [
                    "--weights",
                    str(weights),
                    "--input",
                    str(folder),
                    "--cameras",
                    str(bad),
                    "--out",
                    str(tmp_path / "o"),
                    "--device",
                    "cpu",
                ]
            )
        )
    assert not (tmp_path / "o").exists()  # nothing half-written
    with pytest.raises(InputError, match="camera file not found"):
        reconstruct.run(
            reconstruct.parse_args(
                [
                    "--weights",
                    str(weights),
                    "--input",
                    str(folder),
                    "--cameras",
                    str(tmp_path / "nope.json"),
                    "--out",
                    str(tmp_path / "o"),
                ]
            )
        )
    with pytest.raises(InputError, match="no cameras in the input"):
        reconstruct.run(
            reconstruct.parse_args(["--weights", str(weights), "--input", str(folder), "--out", str(tmp_path / "o")])
        )
    assert reconstruct.main(["--weights", str(weights), "--input", str(folder), "--out", str(tmp_path / "o")]) == 2


def test_fit_to_multiple_updates_intrinsics():
    images = torch.rand(2, 3, 37, 50)
    fx = torch.tensor([[0.8, 1.1, 0.5, 0.45]]).repeat(2, 1)
    out, fx2, _ = fit_frames(images, fx, 8)
    assert out.shape[-2:] == (32, 48)
    # a pixel's ray is unchanged by the crop: the principal point moves by the crop offset, in normalised units
    top, left = (37 - 32) // 2, (50 - 48) // 2
    assert fx2[0, 0].item() == pytest.approx(0.8 * 50 / 48)
    assert fx2[0, 2].item() == pytest.approx((0.5 * 50 - left) / 48)
    assert fx2[0, 3].item() == pytest.approx((0.45 * 37 - top) / 32)
    torch.testing.assert_close(out, images[..., top : top + 32, left : left + 48])


def test_preprocess_single_image_trajectory(tmp_path):
    img = tmp_path / "photo.png"
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(img)
    npz = tmp_path / "s.npz"
    assert preprocess.main(["--image", str(img), "--trajectory", "spiral", "--num-frames", "7", "--out", str(npz)]) == 0
    with np.load(npz) as d:
        assert d["images"].shape == (7, 3, 24, 32)
        np.testing.assert_allclose(d["C2W"][0], np.eye(4), atol=1e-6)
        assert np.abs(d["C2W"][1:, :3, 3]).max() > 1e-3  # the camera moves
        assert d["fxfycxcy"][0, 1] == pytest.approx(0.5 / np.tan(np.deg2rad(30)), rel=1e-5)


def test_depth_to_color_handles_long_high_resolution_sequences():
    """49 frames at 480x832 (19.6M depths, over torch.quantile's 2^24 limit) colour without error; the nearest 2 %
    disparity sets the colour map's low end: on a depth ramp the far end is dark blue, the near end dark red."""
    from diff4splat.media import depth_to_color

    depth = torch.linspace(1.0, 10.0, 480 * 832).reshape(1, 1, 480, 832).expand(49, 1, 480, 832)
    rgb = depth_to_color(depth)
    assert rgb.shape == (49, 480, 832, 3) and rgb.dtype == np.uint8
    far, near = rgb[0, -1, -1], rgb[0, 0, 0]  # the far end (lowest disparity) maps to 0: dark blue, near to 1: red
    assert tuple(far) == (0, 0, 128) and tuple(near) == (128, 0, 0)
