"""Gaussian scene files: standard 3DGS ``.ply``, antimatter15 ``.splat``, per-frame ``.ply`` sequences and a native
4D ``.safetensors``.

- ``.ply`` (what the Inria viewer and SuperSplat read): binary little-endian float32 vertex properties ``x y z
  nx ny nz f_dc_0..2 f_rest_0..(3(K-1)-1) opacity scale_0..2 rot_0..3``, normals zero, opacity as a logit, scales
  as logs, rotation wxyz, colours as SH with ``f_dc = (rgb - 0.5) / C0`` and ``f_rest`` channel-major (all red
  coefficients of degrees >= 1 first, then green, then blue).
- ``.splat``: 32-byte records, largest x most opaque first: position 3 x f32, linear scale 3 x f32, RGBA 4 x u8
  (alpha = opacity), rotation 4 x u8 = ``clip(q_wxyz / |q| * 128 + 128, 0, 255)``. No header.
- 4D ``.safetensors``: tensors ``canonical.{means,quats,scales,opacities,colors}``, ``times``, ``delta_means``,
  ``delta_quats``, ``delta_log_scales`` (activated, float32), optionally ``opacities_t`` / ``colors_t`` (opacity and
  colour per query time, when they change over time; readers that do not know them see the canonical ones), and
  string metadata ``format``, ``version``, ``sh_degree``, ``user`` (a JSON object you pass in).

Every write goes through `diff4splat.files` (a temporary name in the target folder, renamed into place), so a failed
write leaves no half-written file. Loading validates and names the file, field and expected form on error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from diff4splat.files import atomic_file, atomic_write_bytes, atomic_write_text
from diff4splat.gaussians.sh import rgb_to_sh_dc, sh_dc_to_rgb
from diff4splat.gaussians.types import DeformableGaussians, Gaussians

__all__ = [
    "FORMAT_4D",
    "load_4d",
    "load_ply",
    "load_splat",
    "ply_property_names",
    "read_4d_metadata",
    "save_4d",
    "save_ply",
    "save_ply_sequence",
    "save_splat",
]

FORMAT_4D = "diff4splat-4d"
VERSION_4D = "1"
_LOGIT_EPS = 1e-7


def _unbatched(g: Gaussians, what: str) -> Gaussians:
    if g.batch_shape:
        raise ValueError(f"{what}: expected unbatched Gaussians ([N, ...]), got batch shape {tuple(g.batch_shape)}")
    return g.detach().to("cpu", torch.float32)


# ----------------------------------------------------------------------------------------------------------------------
# .ply
# ----------------------------------------------------------------------------------------------------------------------


def ply_property_names(sh_degree: int | None) -> list[str]:
    """Vertex property names of the standard 3DGS ``.ply`` for a colour SH degree (None = RGB -> degree 0)."""
    k = 1 if sh_degree is None else (sh_degree + 1) ** 2
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(3 * (k - 1))]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    return names


def _ply_header(names: list[str], n: int) -> bytes:
    lines = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    lines += [f"property float {name}" for name in names]
    lines += ["end_header"]
    return ("\n".join(lines) + "\n").encode("ascii")


def _logit(p: Tensor) -> Tensor:
    p = p.double().clamp(_LOGIT_EPS, 1 - _LOGIT_EPS)
    return (torch.log(p) - torch.log1p(-p)).float()


def save_ply(gaussians: Gaussians, path: str | os.PathLike) -> Path:
    """Write unbatched Gaussians as a standard 3DGS ``.ply`` (see the module docstring); returns the path."""
    g = _unbatched(gaussians, f"save_ply({path})")
    n = g.num_gaussians
    if g.sh_degree is None:
        dc, rest = rgb_to_sh_dc(g.colors), torch.zeros(n, 0)
    else:
        dc = g.colors[:, 0, :]
        rest = g.colors[:, 1:, :].transpose(1, 2).reshape(n, -1)  # channel-major
    if (g.scales <= 0).any():
        raise ValueError(f"save_ply({path}): scales must be > 0 (they are written as logs)")
    columns = [
        g.means,
        torch.zeros(n, 3),
        dc,
        rest,
        _logit(g.opacities)[:, None],
        torch.log(g.scales.double()).float(),
        g.quats,
    ]
    data = torch.cat(columns, dim=1).numpy().astype("<f4", copy=False)
    header = _ply_header(ply_property_names(g.sh_degree), n)

    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        f.write(header)
        f.write(memoryview(np.ascontiguousarray(data)).cast("B"))  # no bytes copy (~75 MB at 732k Gaussians)
    return Path(path)


def _read_ply_vertices(path: Path) -> dict[str, np.ndarray]:
    from plyfile import PlyData

    try:
        ply = PlyData.read(str(path))
    except Exception as e:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(f"load_ply({path}): not a readable PLY file ({e})") from e
    if "vertex" not in ply:
        raise ValueError(f"load_ply({path}): no 'vertex' element; expected a 3DGS PLY")
    v = ply["vertex"].data
    return {name: np.asarray(v[name]) for name in v.dtype.names}


def load_ply(path: str | os.PathLike) -> Gaussians:
    """Read a standard 3DGS ``.ply`` into activated Gaussians (RGB colours when it has no ``f_rest_*``, SH otherwise;
    extra properties such as ``red``/``green``/``blue`` are ignored)."""
    path = Path(path)
    v = _read_ply_vertices(path)
    required = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"]
    required += [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)]
    missing = [name for name in required if name not in v]
    if missing:
        raise ValueError(f"load_ply({path}): vertex properties {missing} missing; expected {required} (+ f_rest_*)")

    def col(*names: str) -> Tensor:
        return torch.from_numpy(np.stack([v[name].astype(np.float64) for name in names], axis=-1))

    n_rest = sum(1 for name in v if name.startswith("f_rest_"))
    if n_rest % 3 or round((n_rest // 3 + 1) ** 0.5) ** 2 != n_rest // 3 + 1:
        raise ValueError(f"load_ply({path}): {n_rest} f_rest_* properties; expected 3 * ((degree + 1)^2 - 1)")
    dc = col("f_dc_0", "f_dc_1", "f_dc_2")
    if n_rest == 0:
        colors = sh_dc_to_rgb(dc)
    else:
        rest = col(*[f"f_rest_{i}" for i in range(n_rest)]).reshape(-1, 3, n_rest // 3).transpose(1, 2)
        colors = torch.cat([dc[:, None, :], rest], dim=1)
    return Gaussians(
        means=col("x", "y", "z").float(),
        quats=col("rot_0", "rot_1", "rot_2", "rot_3").float(),
        scales=torch.exp(col("scale_0", "scale_1", "scale_2")).float(),
        opacities=torch.sigmoid(col("opacity")[:, 0]).float(),
        colors=colors.float(),
    )


def save_ply_sequence(
    gaussians: DeformableGaussians,
    folder: str | os.PathLike,
    prefix: str = "frame_",
    workers: int = 4,
) -> list[Path]:
    """One ``.ply`` per stored query time (``frame_0000.ply`` ...) plus ``times.json`` (the times in order).

    ``workers`` threads write frames concurrently (the tensor work and the file writes release the GIL; a scene of
    13 frames × 732k Gaussians is ~1 GB of files)."""
    from concurrent.futures import ThreadPoolExecutor

    if gaussians.batch_shape:
        raise ValueError(f"save_ply_sequence({folder}): expected unbatched DeformableGaussians")
    folder = Path(folder)
    frames = list(enumerate(gaussians.frames()))
    with ThreadPoolExecutor(max(1, workers)) as pool:
        paths = list(pool.map(lambda item: save_ply(item[1], folder / f"{prefix}{item[0]:04d}.ply"), frames))
    times = gaussians.times.detach().cpu().double().tolist()
    atomic_write_text(folder / "times.json", json.dumps({"times": times, "files": [p.name for p in paths]}, indent=1))
    return paths


# ----------------------------------------------------------------------------------------------------------------------
# .splat
# ----------------------------------------------------------------------------------------------------------------------

_SPLAT_DTYPE = np.dtype([("position", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)])


def save_splat(gaussians: Gaussians, path: str | os.PathLike) -> Path:
    """Write unbatched Gaussians in the antimatter15 ``.splat`` format (SH colours keep only their DC term)."""
    g = _unbatched(gaussians, f"save_splat({path})")
    rgb = g.colors if g.sh_degree is None else sh_dc_to_rgb(g.colors[:, 0, :])
    order = torch.argsort(-(g.scales.prod(-1) * g.opacities), stable=True)
    rec = np.zeros(g.num_gaussians, dtype=_SPLAT_DTYPE)
    rec["position"] = g.means[order].numpy()
    rec["scale"] = g.scales[order].numpy()
    rgba = torch.cat([rgb, g.opacities[:, None]], dim=1)[order]
    rec["rgba"] = (rgba * 255).clamp(0, 255).numpy().astype(np.uint8)
    q = torch.nn.functional.normalize(g.quats[order], dim=-1)
    rec["rot"] = (q * 128 + 128).clamp(0, 255).numpy().astype(np.uint8)
    return atomic_write_bytes(path, rec.tobytes())


def load_splat(path: str | os.PathLike) -> Gaussians:
    """Read a ``.splat`` file (colours and opacity quantised to 1/255, rotation to 1/128)."""
    path = Path(path)
    raw = path.read_bytes()
    if len(raw) % _SPLAT_DTYPE.itemsize:
        raise ValueError(f"load_splat({path}): size {len(raw)} is not a multiple of 32-byte records")
    rec = np.frombuffer(raw, dtype=_SPLAT_DTYPE)
    rgba = torch.from_numpy(rec["rgba"].astype(np.float32) / 255.0)
    q = torch.from_numpy((rec["rot"].astype(np.float32) - 128.0) / 128.0)
    return Gaussians(
        means=torch.from_numpy(rec["position"].copy()),
        quats=torch.nn.functional.normalize(q, dim=-1),
        scales=torch.from_numpy(rec["scale"].copy()),
        opacities=rgba[:, 3].contiguous(),
        colors=rgba[:, :3].contiguous(),
    )


# ----------------------------------------------------------------------------------------------------------------------
# 4D safetensors
# ----------------------------------------------------------------------------------------------------------------------

_CANONICAL_FIELDS = ("means", "quats", "scales", "opacities", "colors")
_DELTA_FIELDS = ("delta_means", "delta_quats", "delta_log_scales")
_TIME_VARYING_FIELDS = ("opacities_t", "colors_t")  # optional: opacity / colour per query time (MoVieS)


def save_4d(gaussians: DeformableGaussians, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write a DeformableGaussians (unbatched or batched) to a native 4D ``.safetensors`` file."""
    from diff4splat.weights import save_safetensors

    d = gaussians.detach().to("cpu", torch.float32)
    tensors = {f"canonical.{k}": getattr(d.canonical, k).contiguous() for k in _CANONICAL_FIELDS}
    tensors["times"] = d.times.contiguous()
    tensors.update({k: getattr(d, k).contiguous() for k in _DELTA_FIELDS})
    tensors.update({k: getattr(d, k).contiguous() for k in _TIME_VARYING_FIELDS if getattr(d, k) is not None})
    meta = {
        "format": FORMAT_4D,
        "version": VERSION_4D,
        "sh_degree": json.dumps(d.canonical.sh_degree),
        "user": json.dumps(metadata or {}),
    }
    return save_safetensors(tensors, path, meta)


def read_4d_metadata(path: str | os.PathLike) -> dict:
    """The user metadata dict stored by ``save_4d``."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT_4D:
        raise ValueError(f"read_4d_metadata({path}): metadata 'format' is {meta.get('format')!r}; expected {FORMAT_4D}")
    return json.loads(meta.get("user", "{}"))


def load_4d(path: str | os.PathLike, device: torch.device | str = "cpu") -> DeformableGaussians:
    """Read a file written by ``save_4d``."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except Exception as e:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(f"load_4d({path}): not a readable safetensors file ({e})") from e
    if meta.get("format") != FORMAT_4D:
        raise ValueError(f"load_4d({path}): metadata 'format' is {meta.get('format')!r}; expected {FORMAT_4D!r}")
    needed = [f"canonical.{k}" for k in _CANONICAL_FIELDS] + ["times", *_DELTA_FIELDS]
    missing = [k for k in needed if k not in tensors]
    if missing:
        raise ValueError(f"load_4d({path}): tensors {missing} missing; expected {needed}")
    canonical = Gaussians(**{k: tensors[f"canonical.{k}"] for k in _CANONICAL_FIELDS})
    return DeformableGaussians(
        canonical,
        tensors["times"],
        *(tensors[k] for k in _DELTA_FIELDS),
        *(tensors.get(k) for k in _TIME_VARYING_FIELDS),
    )
