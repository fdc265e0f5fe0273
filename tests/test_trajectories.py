"""Trajectories: presets, RealEstate10K txt (exact round trip on the real files), JSON and the plot."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diff4splat.geometry.trajectories import (
    PRESETS,
    PROTOCOL_TRAJECTORIES,
    Trajectory,
    make_trajectory,
    plot_trajectory,
    read_re10k_txt,
    read_trajectory_json,
    write_re10k_txt,
    write_trajectory_json,
)

RE10K = Path(__file__).resolve().parent / "fixtures" / "re10k" / "pose_files"


def re10k_files() -> list[Path]:
    return sorted(RE10K.glob("*.txt"))


def test_re10k_round_trip_is_text_exact(tmp_path):
    files = re10k_files()
    assert len(files) == 5
    for path in files:
        traj = read_re10k_txt(path)
        assert len(traj) == 16 and traj.meta["url"].startswith("https://www.youtube.com/")
        R = traj.c2w[:, :3, :3]
        assert (R @ R.transpose(1, 2) - torch.eye(3, dtype=torch.float64)).abs().max() < 1e-6
        out = write_re10k_txt(traj, tmp_path / path.name)
        assert out.read_bytes() == path.read_bytes()


def test_re10k_reader_errors(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("https://x\n1 2 3\n")
    with pytest.raises(ValueError, match=r"bad\.txt.*line 2 has 3 columns; expected 19"):
        read_re10k_txt(bad)


def test_json_round_trip_bit_exact(tmp_path):
    files = re10k_files()
    traj = read_re10k_txt(files[0])
    traj.image_size = (256, 384)
    path = write_trajectory_json(traj, tmp_path / "t.json")
    back = read_trajectory_json(path)
    assert torch.equal(back.c2w, traj.c2w) and torch.equal(back.fxfycxcy, traj.fxfycxcy)
    assert torch.equal(back.timestamps, traj.timestamps) and back.image_size == (256, 384)
    assert back.meta == traj.meta
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="format"):
        read_trajectory_json(tmp_path / "bad.json")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_start_at_identity(name):
    traj = make_trajectory(name, 9, strength=1.0, look_at=2.0)
    assert traj.c2w.shape == (9, 4, 4) and traj.fxfycxcy.shape == (9, 4)
    torch.testing.assert_close(traj.c2w[0], torch.eye(4, dtype=torch.float64))
    R = traj.c2w[:, :3, :3]
    torch.testing.assert_close(R @ R.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(9, 3, 3))


@pytest.mark.parametrize(
    ("name", "axis", "sign"),
    [
        ("forward", 2, 1),
        ("backward", 2, -1),
        ("move_up", 1, -1),
        ("move_down", 1, 1),
        ("truck_left", 0, -1),
        ("truck_right", 0, 1),
        ("dolly_in", 2, 1),
    ],
)
def test_translation_presets_move_the_right_way(name, axis, sign):
    traj = make_trajectory(name, 5, strength=1.0, look_at=2.0)
    end = traj.c2w[-1, :3, 3]
    assert end[axis].item() == pytest.approx(sign * 1.0)  # 0.5 * strength * distance
    assert end.abs().sum().item() == pytest.approx(1.0)


def test_rotation_presets_and_zoom():
    arc = make_trajectory("arc_left", 7, look_at=2.0).c2w
    target = torch.tensor([0.0, 0.0, 2.0], dtype=torch.float64)
    assert arc[-1, 0, 3] < 0  # moved left
    for pose in arc:  # always aimed at the look-at point, at a constant distance
        to_t = target - pose[:3, 3]
        assert to_t.norm().item() == pytest.approx(2.0)
        torch.testing.assert_close(pose[:3, 2], to_t / to_t.norm())
    assert make_trajectory("pan_left", 3).c2w[-1, 0, 2] < 0  # looks to the left
    zoom = make_trajectory("zoom_in", 3, strength=1.0).fxfycxcy
    torch.testing.assert_close(zoom[:, 0], torch.tensor([1.0, 1.5, 2.0], dtype=torch.float64))
    spiral = make_trajectory("spiral", 17).c2w
    assert spiral[-1, 2, 3].item() == pytest.approx(1.0) and spiral[8, 1, 3].abs() > 0  # forward and circling
    assert set(PROTOCOL_TRAJECTORIES) <= set(PRESETS)
    assert torch.equal(make_trajectory("move-up", 4).c2w, make_trajectory("move_up", 4).c2w)
    with pytest.raises(ValueError, match="unknown preset"):
        make_trajectory("barrel_roll", 4)


def test_plot_writes_png(tmp_path):
    path = plot_trajectory(make_trajectory("spiral", 12), tmp_path / "traj.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert not list(tmp_path.glob(".*tmp"))


def test_trajectory_validates_shapes():
    with pytest.raises(ValueError, match=r"fxfycxcy: expected shape \[3, 4\]"):
        Trajectory(torch.eye(4).repeat(3, 1, 1), torch.zeros(2, 4))
