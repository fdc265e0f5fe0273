"""Gaussian files: standard 3DGS .ply (header byte for byte, round trips), .splat, ply sequences, 4D safetensors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diff4splat.gaussians import (
    DeformableGaussians,
    Gaussians,
    load_4d,
    load_ply,
    load_splat,
    read_4d_metadata,
    save_4d,
    save_ply,
    save_ply_sequence,
    save_splat,
)
from diff4splat.geometry.rotations import quat_normalize

EXPECTED_HEADER_DEG0 = (
    b"ply\n"
    b"format binary_little_endian 1.0\n"
    b"element vertex 7\n"
    b"property float x\n"
    b"property float y\n"
    b"property float z\n"
    b"property float nx\n"
    b"property float ny\n"
    b"property float nz\n"
    b"property float f_dc_0\n"
    b"property float f_dc_1\n"
    b"property float f_dc_2\n"
    b"property float opacity\n"
    b"property float scale_0\n"
    b"property float scale_1\n"
    b"property float scale_2\n"
    b"property float rot_0\n"
    b"property float rot_1\n"
    b"property float rot_2\n"
    b"property float rot_3\n"
    b"end_header\n"
)


def make(n=7, sh=None, seed=0) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    return Gaussians(
        means=torch.randn(n, 3, generator=g),
        quats=quat_normalize(torch.randn(n, 4, generator=g)),
        scales=torch.rand(n, 3, generator=g) * 0.1 + 0.001,
        opacities=torch.rand(n, generator=g) * 0.98 + 0.01,
        colors=torch.rand(n, 3, generator=g) if sh is None else torch.randn(n, (sh + 1) ** 2, 3, generator=g),
    )


def test_ply_header_and_layout(tmp_path):
    g = make()
    path = save_ply(g, tmp_path / "g.ply")
    data = path.read_bytes()
    assert data.startswith(EXPECTED_HEADER_DEG0)
    body = np.frombuffer(data[len(EXPECTED_HEADER_DEG0) :], dtype="<f4").reshape(7, 17)
    assert np.array_equal(body[:, :3], g.means.numpy())
    assert np.all(body[:, 3:6] == 0)
    np.testing.assert_allclose(body[:, 6:9], (g.colors.numpy() - 0.5) / 0.28209479177387814, rtol=1e-6)
    np.testing.assert_allclose(body[:, 9], np.log(g.opacities.numpy() / (1 - g.opacities.numpy())), rtol=1e-5)
    np.testing.assert_allclose(body[:, 10:13], np.log(g.scales.numpy()), rtol=1e-6)
    assert np.array_equal(body[:, 13:17], g.quats.numpy())  # wxyz as rot_0..3


def test_ply_header_with_sh_degree_3(tmp_path):
    path = save_ply(make(sh=3), tmp_path / "g.ply")
    header = path.read_bytes().split(b"end_header\n")[0].decode()
    names = [line.split()[-1] for line in header.splitlines() if line.startswith("property")]
    expected = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    expected += [f"f_rest_{i}" for i in range(45)] + ["opacity", "scale_0", "scale_1", "scale_2"]
    expected += ["rot_0", "rot_1", "rot_2", "rot_3"]
    assert names == expected


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 50), st.sampled_from([None, 1, 3]), st.integers(0, 1000))
def test_ply_round_trip(tmp_path_factory, n, sh, seed):
    g = make(n, sh, seed)
    path = save_ply(g, tmp_path_factory.mktemp("ply") / "g.ply")
    back = load_ply(path)
    # positions, rotations and SH coefficients are stored as is: bit exact
    assert torch.equal(back.means, g.means) and torch.equal(back.quats, g.quats)
    if sh is not None:
        assert torch.equal(back.colors, g.colors)
    else:
        torch.testing.assert_close(back.colors, g.colors, atol=1e-7, rtol=0)
    # opacity (logit) and scale (log) go through an activation: float32 round-off only
    torch.testing.assert_close(back.opacities, g.opacities, atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(back.scales, g.scales, atol=0, rtol=1e-6)
    # and a second save writes the same stored values
    again = save_ply(back, path.with_name("again.ply")).read_bytes()
    first = path.read_bytes()
    h = first.index(b"end_header\n") + len(b"end_header\n")
    a = np.frombuffer(first[h:], "<f4")
    b = np.frombuffer(again[h:], "<f4")
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_ply_bad_input(tmp_path):
    (tmp_path / "junk.ply").write_bytes(b"not a ply")
    with pytest.raises(ValueError, match=r"junk\.ply"):
        load_ply(tmp_path / "junk.ply")
    g = make(3)
    ply = tmp_path / "no_opacity.ply"
    header = EXPECTED_HEADER_DEG0.replace(b"property float opacity\n", b"").replace(b"vertex 7", b"vertex 3")
    ply.write_bytes(header + np.zeros((3, 16), "<f4").tobytes())
    with pytest.raises(ValueError, match=r"no_opacity\.ply.*\['opacity'\] missing"):
        load_ply(ply)
    with pytest.raises(ValueError, match="unbatched"):
        save_ply(Gaussians.stack([g, g]), tmp_path / "b.ply")


def test_failed_write_leaves_nothing(tmp_path):
    g = make(3)
    g.scales[0, 0] = -1.0
    with pytest.raises(ValueError, match="scales must be > 0"):
        save_ply(g, tmp_path / "x.ply")
    assert list(tmp_path.iterdir()) == []


def test_splat_format(tmp_path):
    g = make(20)
    path = save_splat(g, tmp_path / "g.splat")
    raw = path.read_bytes()
    assert len(raw) == 20 * 32
    first = np.frombuffer(raw[:32], dtype=np.uint8)
    biggest = int(torch.argmax(g.scales.prod(-1) * g.opacities))
    assert np.array_equal(np.frombuffer(first[:12].tobytes(), "<f4"), g.means[biggest].numpy())
    assert np.array_equal(np.frombuffer(first[12:24].tobytes(), "<f4"), g.scales[biggest].numpy())
    rgba = (torch.cat([g.colors[biggest], g.opacities[biggest, None]]) * 255).to(torch.uint8).numpy()
    assert np.array_equal(first[24:28], rgba)
    rot = (g.quats[biggest] * 128 + 128).clamp(0, 255).to(torch.uint8).numpy()
    assert np.array_equal(first[28:32], rot)
    back = load_splat(path)
    order = torch.argsort(-(g.scales.prod(-1) * g.opacities), stable=True)
    assert torch.equal(back.means, g.means[order])
    torch.testing.assert_close(back.colors, g.colors[order], atol=1 / 255, rtol=0)
    torch.testing.assert_close(back.quats, g.quats[order], atol=0.02, rtol=0)  # q and -q aside, 1/128 steps


def test_ply_sequence_and_4d(tmp_path):
    T, n = 3, 5
    c = make(n)
    d = DeformableGaussians(
        c,
        torch.tensor([0.0, 0.4, 1.0]),
        torch.randn(T, n, 3),
        quat_normalize(torch.randn(T, n, 4)),
        torch.randn(T, n, 3) * 0.1,
    )
    paths = save_ply_sequence(d, tmp_path / "seq")
    assert [p.name for p in paths] == ["frame_0000.ply", "frame_0001.ply", "frame_0002.ply"]
    assert json.loads((tmp_path / "seq" / "times.json").read_text())["times"] == pytest.approx([0.0, 0.4, 1.0])
    assert torch.equal(load_ply(paths[1]).means, d.at_index(1).means)

    path = save_4d(d, tmp_path / "scene.safetensors", metadata={"prompt": "a cat", "fps": 16})
    back = load_4d(path)
    for k in ("means", "quats", "scales", "opacities", "colors"):
        assert torch.equal(getattr(back.canonical, k), getattr(d.canonical, k))
    assert torch.equal(back.times, d.times) and torch.equal(back.delta_quats, d.delta_quats)
    assert torch.equal(back.at(0.4).means, d.at(0.4).means)
    assert read_4d_metadata(path) == {"prompt": "a cat", "fps": 16}
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match=r"other\.safetensors.*'format'"):
        load_4d(tmp_path / "other.safetensors")
