"""Evaluation: metric values on known inputs, `python -m diff4splat.evaluate clips` on synthetic shards with a tiny
exported LRDM, `... scenes` on generated-scene folders, and the errors on bad input."""

from __future__ import annotations

import csv
import io
import json
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from datamodules import synthetic
from datamodules.spec import encode_clip
from datamodules.stream import ClipSamplingConfig, ClipTransform
from datamodules.synthetic import SyntheticConfig, generate_clip
from diff4splat import evaluate
from diff4splat.cli import InputError
from diff4splat.configs import to_plain
from diff4splat.geometry.cameras import unproject_depth
from diff4splat.losses.lpips import LPIPS
from diff4splat.media import to_uint8
from diff4splat.metrics import PSNR_CAP, depth_metrics, image_metrics, track_metrics, warp_error
from diff4splat.models.lrdm import LRDM, lrdm_preset
from diff4splat.pipelines.evaluation import ClipEvalConfig, clip_batch, evaluate_clip, evaluate_scene
from diff4splat.pipelines.outputs import read_scene_output
from tests.scene_outputs import write_scene_output

torch.set_num_threads(1)
LRDM_TINY = dict(dim=48, depth=2, num_heads=4, decoder_channels=8)


def _csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A tiny LRDM exported as training does (the config in the safetensors metadata)."""
    torch.manual_seed(0)
    cfg = lrdm_preset("tiny", **LRDM_TINY)
    path = tmp_path_factory.mktemp("lrdm") / "lrdm.safetensors"
    state = {k: v.contiguous() for k, v in LRDM(cfg).state_dict().items()}
    save_file(state, str(path), metadata={"hparams": json.dumps({"model": to_plain(cfg)})})
    return path


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """3 dynamic synthetic clips (9 frames, 32², PNG) in one shard, written by the synthetic-data CLI."""
    out = tmp_path_factory.mktemp("shards")
    synthetic.main(["--out", str(out), "--clips", "3", "--frames", "9", "--size", "32", "--format", "png"])
    return out


# ------------------------------------------------------------------------------------------------------ metrics


def test_image_metrics_known_values():
    x = torch.rand(3, 3, 24, 24, generator=torch.Generator().manual_seed(0)) * 0.8
    m = image_metrics(x + 0.1, x)  # MSE = 0.01 exactly -> 20 dB
    torch.testing.assert_close(m["psnr"], torch.full((3,), 20.0), atol=1e-4, rtol=0)
    same = image_metrics(x, x, LPIPS(pretrained=False))
    assert same["psnr"].tolist() == [PSNR_CAP] * 3  # infinite PSNR is capped
    torch.testing.assert_close(same["ssim"], torch.ones(3))
    assert same["lpips"].abs().max() == 0
    assert (image_metrics(x + 0.1, x, LPIPS(pretrained=False))["lpips"] > 0).all()


def test_depth_metrics_known_values():
    clip = generate_clip(SyntheticConfig(num_frames=3, height=24, width=24), seed=1)
    gt, valid = torch.from_numpy(clip.depth), torch.from_numpy(clip.depth_valid)
    assert valid.float().mean() > 0.5
    assert depth_metrics(gt, gt, valid) == {"abs_rel": 0.0, "delta1": 1.0, "pixels": int(valid.sum())}
    d = depth_metrics(1.1 * gt, gt, valid)
    assert d["abs_rel"] == pytest.approx(0.1, abs=1e-6) and d["delta1"] == 1.0
    d = depth_metrics(1.3 * gt, gt, valid)
    assert d["abs_rel"] == pytest.approx(0.3, abs=1e-6) and d["delta1"] == 0.0
    d = depth_metrics(torch.zeros_like(gt), gt, valid)  # nothing rendered: AbsRel 1, no inlier
    assert d["abs_rel"] == 1.0 and d["delta1"] == 0.0
    d = depth_metrics(1.3 * gt, gt, valid, align="median")
    assert d["abs_rel"] == pytest.approx(0.0, abs=1e-6) and d["delta1"] == 1.0
    half = gt.clone()
    half[..., :12] *= 2.0  # half the columns off by a factor 2
    d = depth_metrics(half, gt, valid)
    expect = float(valid[..., :12].sum()) / float(valid.sum())
    assert d["abs_rel"] == pytest.approx(expect, abs=1e-6) and d["delta1"] == pytest.approx(1 - expect, abs=1e-9)
    assert math.isnan(depth_metrics(gt, gt, torch.zeros_like(valid))["abs_rel"])


def test_track_metrics_known_values():
    gt = torch.randn(2, 10, 3, generator=torch.Generator().manual_seed(0))
    pred = gt.clone()
    pred[:, :5] += torch.tensor([0.0, 0.0, 0.02])
    pred[:, 5:] += torch.tensor([0.0, 0.09, 0.12])  # error 0.15
    valid = torch.ones(2, 10, dtype=torch.bool)
    valid[1, 0] = False
    pred[1, 0] = float("nan")  # invalid pairs are ignored whatever they hold
    m = track_metrics(pred, gt, valid)
    assert m["pairs"] == 19
    assert m["epe"] == pytest.approx((9 * 0.02 + 10 * 0.15) / 19, abs=1e-6)
    assert m["within_0.05"] == pytest.approx(9 / 19) and m["within_0.10"] == pytest.approx(9 / 19)


def test_warp_error_identity_offset_and_occlusion():
    h, w = 12, 16
    frame = torch.rand(3, h, w, generator=torch.Generator().manual_seed(0)) * 0.8
    eye, fx = torch.eye(4), torch.tensor([1.0, 1.2, 0.5, 0.5])
    points = unproject_depth(torch.full((h, w), 2.0), eye, fx)  # a still plane, a still camera: identity warp
    mask = torch.ones(h, w, dtype=torch.bool)
    err, cover = warp_error(frame, frame + 0.1, points, mask, eye, fx, torch.full((h, w), 2.0))
    assert err == pytest.approx(0.1, abs=1e-6) and cover == 1.0
    mask[:, : w // 2] = False
    err, cover = warp_error(frame, frame, points, mask, eye, fx, None)
    assert err == pytest.approx(0.0, abs=1e-7) and cover == 0.5
    err, cover = warp_error(frame, frame, points, mask, eye, fx, torch.full((h, w), 1.0))  # an occluder at t+1
    assert math.isnan(err) and cover == 0.0


# ------------------------------------------------------------------------------------------------------ clips


def test_evaluate_clips_cli(tmp_path, weights, shards):
    out = tmp_path / "res"
    args = [
        "clips",
        "--weights",
        str(weights),
        "--shards",
        str(shards),
        "--resolution",
        "32",
        "--num-input",
        "3",
        "--num-output",
        "3",
        "--device",
        "cpu",
    ]
    assert evaluate.main([*args, "--out", str(out), "--lpips-random"]) == 0
    rows = _csv(out / "results.csv")
    assert [r["clip"] for r in rows] == [f"synthetic/synthdyn_0000_{i:06d}" for i in range(3)]  # one row per clip
    views = _csv(out / "views.csv")
    assert len(views) == 3 * 3
    for r in rows:
        psnr = float(r["psnr"])
        assert 0 < psnr < PSNR_CAP and 0 < float(r["psnr_nearest_input"]) < PSNR_CAP
        # the clip's PSNR is the mean of its views' (both rounded to 0.01 in the tables)
        mine = [float(v["psnr"]) for v in views if v["clip"] == r["clip"]]
        assert psnr == pytest.approx(np.mean(mine), abs=0.011)
        assert 0 <= float(r["depth_delta1"]) <= 1 and float(r["depth_abs_rel"]) > 0
        assert float(r["epe3d"]) > 0 and float(r["epe3d_motion"]) > 0  # dynamic clips have tracks
        assert 0 <= float(r["lpips"])
    for v in views:  # held-out outputs: never an input frame (inputs of 9 frames: 0, 4, 8)
        assert int(v["frame"]) not in (0, 4, 8) and float(v["time_gap"]) > 0
    md = (out / "results.md").read_text()
    assert md.count("| synthetic/synthdyn_0000_") == 3 and "| **mean** |" in md
    summary = json.loads((out / "summary.json").read_text())
    assert summary["count"] == 3 and summary["skipped"] == 0
    assert summary["mean"]["psnr"] == pytest.approx(np.mean([float(r["psnr"]) for r in rows]), abs=0.01)
    for png in ("metrics_per_clip.png", "psnr_vs_time_gap.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # no temporary files left

    assert evaluate.main([*args, "--max-clips", "2", "--out", str(tmp_path / "two"), "--no-lpips"]) == 0
    two = _csv(tmp_path / "two" / "results.csv")
    assert len(two) == 2 and two[0]["lpips"] == "" and two[0]["psnr"] == rows[0]["psnr"]  # deterministic


def _batch(dynamic: bool):
    clip = generate_clip(SyntheticConfig(num_frames=7, height=32, width=32, dynamic=dynamic), seed=5)
    sampling = ClipSamplingConfig(
        num_input=3,
        num_output=2,
        resolution=32,
        size_divisor=8,
        random_aspect=False,
        crop_scale=(1.0, 1.0),
        eval_outputs="held_out",
    )
    return clip_batch(clip, ClipTransform(sampling, train=False), max_gap=34)


def test_evaluate_clip_tracks_and_depth_of_a_still_model():
    """A fresh LRDM predicts no motion (zero-initialised deformation head): its displacement error is 0 on a static
    scene and the mean track motion on a dynamic one."""
    torch.manual_seed(0)
    model = LRDM(lrdm_preset("tiny", **LRDM_TINY)).eval()
    static_row, _ = evaluate_clip(model, *_batch(dynamic=False), None, ClipEvalConfig())
    assert static_row["epe3d_motion"] == 0.0 and static_row["epe3d"] > 0
    dynamic_row, views = evaluate_clip(model, *_batch(dynamic=True), None, ClipEvalConfig())
    assert dynamic_row["epe3d_motion"] > 0.01
    assert len(views) == 2 and "lpips" not in dynamic_row
    assert 0 <= dynamic_row["depth_delta1"] <= 1 and dynamic_row["views"] == 2


def _write_tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def test_evaluate_clips_skips_corrupt_and_reports_bad_input(tmp_path, weights, capsys):
    clip = generate_clip(SyntheticConfig(num_frames=7, height=32, width=32), seed=2)
    good = {f"{clip.key}.{k}": v for k, v in encode_clip(clip).items()}
    _write_tar(tmp_path / "mixed.tar", {"broken.meta.json": b"{not json", **good})
    base = [
        "clips",
        "--weights",
        str(weights),
        "--resolution",
        "32",
        "--num-input",
        "3",
        "--num-output",
        "2",
        "--device",
        "cpu",
        "--no-lpips",
    ]
    out = tmp_path / "res"
    assert evaluate.main([*base, "--shards", str(tmp_path / "mixed.tar"), "--out", str(out)]) == 0
    assert len(_csv(out / "results.csv")) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped"] == 1 and "broken" in summary["skipped_reasons"][0]
    assert "Skipped:" in (out / "results.md").read_text()

    _write_tar(tmp_path / "bad.tar", {"broken.meta.json": b"{not json"})
    assert evaluate.main([*base, "--shards", str(tmp_path / "bad.tar"), "--out", str(tmp_path / "o1")]) == 2
    assert "no clip of 1 shards could be evaluated" in capsys.readouterr().err
    assert evaluate.main([*base, "--shards", str(tmp_path / "none-*.tar"), "--out", str(tmp_path / "o2")]) == 2
    assert "none-*.tar: no shard file matches" in capsys.readouterr().err
    args = [
        *base[:-1],
        "--shards",
        str(tmp_path / "mixed.tar"),
        "--out",
        str(tmp_path / "o3"),
        "--lpips-vgg",
        str(tmp_path / "vgg.pth"),
        "--lpips-lin",
        str(tmp_path / "lin.pth"),
    ]
    assert evaluate.main(args) == 2
    err = capsys.readouterr().err
    assert "LPIPS weights not found" in err and "vgg.pth" in err and "--no-lpips" in err
    assert not any((tmp_path / o).exists() for o in ("o1", "o2", "o3"))  # nothing half-written


# ------------------------------------------------------------------------------------------------------ scenes


def test_evaluate_scenes_rerender_and_temporal_consistency(tmp_path):
    good, renders = write_scene_output(tmp_path / "good", height=48, width=64)
    shuffled = to_uint8(renders)[[0, 3, 1, 5, 2, 4]]  # the same frames out of order
    bad, _ = write_scene_output(tmp_path / "bad", height=48, width=64, video=shuffled)
    out = tmp_path / "res"
    assert evaluate.main(["scenes", str(good), str(bad), "--out", str(out), "--lpips-random", "--device", "cpu"]) == 0
    rows = {Path(r["scene"]).name: r for r in _csv(out / "results.csv")}
    assert sorted(rows) == ["bad", "good"]
    g, b = rows["good"], rows["bad"]
    assert float(g["psnr"]) > 30 and float(g["ssim"]) > 0.9  # H.264 of the scene's own renders
    assert float(g["psnr"]) > float(b["psnr"]) + 5
    assert float(g["warp_error_render"]) < 0.01  # the 4D scene is consistent along its own motion
    assert float(g["warp_error_video"]) < 0.02 and float(b["warp_error_video"]) > 3 * float(g["warp_error_video"])
    assert g["warp_error_render"] == b["warp_error_render"]  # the renders do not depend on the video
    assert 0.5 < float(g["warp_coverage"]) <= 1
    frames = _csv(out / "frames.csv")
    assert len(frames) == 2 * 6 and frames[5]["warp_error_video"] == ""  # no pair after the last frame
    # frame 0 kept its place (H.264 codes it a little differently in the two videos); frame 1 did not
    assert float(frames[6]["psnr"]) == pytest.approx(float(frames[0]["psnr"]), abs=0.5)
    assert float(frames[7]["psnr"]) < float(frames[1]["psnr"]) - 5
    for png in ("rerender_psnr.png", "warp_error.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_scene_folder_errors(tmp_path, capsys):
    folder, _ = write_scene_output(tmp_path / "s")
    meta = json.loads((folder / "meta.json").read_text())
    for field, value, message in [
        ("c2w", [[1, 0, 0]], r"field trajectory\.c2w must be F×4×4 numbers"),
        ("times", [0.0, 0.5, 1.0, 1.5, 2.0, 3.0], r"field trajectory\.times must lie in \[0, 1\]"),
        ("height", "32", r"field trajectory\.height must be a positive integer"),
        ("fxfycxcy", None, r"field trajectory\.fxfycxcy is missing"),
    ]:
        traj = dict(meta["trajectory"], **{field: value})
        if value is None:
            del traj[field]
        (folder / "meta.json").write_text(json.dumps({"trajectory": traj}))
        with pytest.raises(InputError, match=message):
            read_scene_output(folder)
    traj = dict(meta["trajectory"])
    traj.update(c2w=traj["c2w"][:5], fxfycxcy=traj["fxfycxcy"][:5], times=traj["times"][:5])
    (folder / "meta.json").write_text(json.dumps({"trajectory": traj}))
    with pytest.raises(InputError, match=r"video\.mp4: 6 frames, but meta\.json's trajectory has 5 cameras"):
        evaluate_scene(read_scene_output(folder))
    (folder / "meta.json").unlink()  # a reconstruct folder: a scene, no trajectory
    scene = read_scene_output(folder)
    assert scene.cameras is None and scene.gaussians.num_times == 6
    with pytest.raises(InputError, match="meta.json has no trajectory"):
        evaluate_scene(scene)
    assert evaluate.main(["scenes", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--no-lpips"]) == 2
    assert "nope/scene.safetensors: no scene file" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_run_leaves_autograd_enabled():
    """The CLI evaluates without gradients but must not switch autograd off for the rest of the process (it did:
    every later test that backpropagated failed)."""
    from diff4splat.cli import InputError
    from diff4splat.evaluate import parse_args, run

    with pytest.raises(InputError):
        run(parse_args(["scenes", "/nonexistent_scene_folder", "--no-lpips", "--out", "/tmp/unused_eval_out"]))
    assert torch.is_grad_enabled()
