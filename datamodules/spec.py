"""The clip schema: one sample of every dataset, on disk (WebDataset tar members) and in memory (`Clip`).

A clip is F frames of one camera moving through one scene (static or dynamic) with its cameras and, where the
dataset has them, exact geometry and motion. Converters build `Clip`s and hand them to `datamodules.write.ShardWriter`;
the streaming pipeline reads tar members back with `decode_sample`. Both ends call the same `validate_clip`, so a
violation is caught at write time and names the sample key and the field (`SpecError`). The frames' byte formats
(JPEG/PNG per frame or one mp4: `encode_frames`, `decode_image`, `image_size`, ...) live in `datamodules.frame_codec`
and stay importable from here.

Tar members of a sample with key K (WebDataset groups members by the text before the first dot, so keys have no dots):

| member                 | content                                                                            |
|------------------------|------------------------------------------------------------------------------------|
| K.000.jpg, K.001.jpg…  | one JPEG (or `.png`) per frame, 3-digit (or longer) frame index; or one `K.mp4`    |
| K.c2w.npy              | (F,4,4) float, camera-to-world, OpenCV (x right, y down, z forward), dataset units |
| K.fxfycxcy.npy         | (F,4) float, normalised intrinsics (fx/W, fy/H, cx/W, cy/H), pixel centres at +0.5 |
| K.timestamps.npy       | (F,) float64, seconds (or frame indices when the rate is unknown), non-decreasing  |
| K.depth.npy            | optional (F,H,W) float16/32 z-depth in the units of `c2w`                           |
| K.depth_valid.npy      | optional (F,H,W) bool (requires depth); absent = finite and > 0                    |
| K.tracks_world.npy     | optional (F,N,3) float32 world points, NaN exactly where not visible               |
| K.tracks_visible.npy   | optional (F,N) bool (required with tracks_world)                                   |
| K.flow.npy             | optional (F,H,W,2) float16/32 forward flow f -> f+1 in pixels, NaN = unknown       |
| K.dynamic_mask.npy     | optional (F,H,W) bool, True on moving objects                                      |
| K.points_world.npy     | optional (P,3) float32 sparse scene points (SfM), world, in the units of `c2w`     |
| K.meta.json            | `ClipMeta` as JSON                                                                 |

Arrays are `.npy` (loaded with `allow_pickle=False`), never pickles. `meta.metric_scale` = units of the
stored `c2w`/depth per metre: stored = metric × metric_scale (1.0 when the dataset is metric, 0.01 for
poses in 100 m units, an estimate or 1.0 with `depth_unit="arbitrary"` when unknown). The batch's `metric_scale` has
the same direction (normalised = metric × metric_scale), as `diff4splat.geometry.cameras.normalize_scene_scale`.
`meta.scale_source` says where that unit comes from (`metric`, `metric_estimated`, `arbitrary`; the convention is
`diff4splat.geometry.scale`): a dataset known to have arbitrary scale (RealEstate10K, DL3DV) or a clip with
`depth_unit="arbitrary"` is never `metric`, and an `arbitrary` clip has `metric_scale` 1. Spec 1.0 shards (before
`scale_source` and `points_world`) still read: their provenance is inferred from the dataset name
(`infer_scale_source`).
Loss weights follow the reference (§8.4, `DATASET_DEFAULTS`).

Example:
    >>> clip = Clip(key="seq0_000000", frames=encode_frames(rgb_uint8), c2w=c2w, fxfycxcy=K,
    ...             timestamps=np.arange(F) / 30.0, meta=ClipMeta(dataset="re10k", sequence="seq0", is_static=True))
    >>> validate_clip(clip)
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from datamodules.frame_codec import (
    JPEG_MAGIC,
    PNG_MAGIC,
    decode_image,
    decode_video,
    encode_frames,
    encode_video,
    image_size,
)
from diff4splat.geometry.scale import DATASET_SCALE_SOURCE, SCALE_SOURCES, infer_scale_source

__all__ = [
    "ARRAY_FIELDS",
    "DATASET_DEFAULTS",
    "KEY_PATTERN",
    "OPTIONAL_ARRAYS",
    "READABLE_SPEC_VERSIONS",
    "REQUIRED_ARRAYS",
    "SPEC_VERSION",
    "Clip",
    "ClipMeta",
    "DatasetDefaults",
    "FrameFormat",
    "SpecError",
    "decode_frames",
    "decode_image",
    "decode_sample",
    "decode_video",
    "encode_clip",
    "encode_frames",
    "encode_video",
    "image_size",
    "validate_clip",
]

SPEC_VERSION = "1.1"
READABLE_SPEC_VERSIONS = ("1.0", SPEC_VERSION)  # 1.0: no scale_source (inferred), no points_world

FrameFormat = Literal["jpg", "png", "mp4"]

KEY_PATTERN = re.compile(r"^[A-Za-z0-9_\-]+$")
ARRAY_FIELDS = (
    "c2w",
    "fxfycxcy",
    "timestamps",
    "depth",
    "depth_valid",
    "tracks_world",
    "tracks_visible",
    "flow",
    "dynamic_mask",
    "points_world",
)
REQUIRED_ARRAYS = ("c2w", "fxfycxcy", "timestamps")
OPTIONAL_ARRAYS = ("depth", "depth_valid", "tracks_world", "tracks_visible", "flow", "dynamic_mask", "points_world")
_FRAME_MEMBER = re.compile(r"^(\d{3,})\.(jpg|jpeg|png)$")


@dataclass(frozen=True)
class DatasetDefaults:
    """Per-dataset facts from the reference (§8.1, §8.4): static flag, maximum frame gap, loss weights."""

    is_static: bool
    max_gap: int
    depth_weight: float
    motion_weight: float


DATASET_DEFAULTS: dict[str, DatasetDefaults] = {
    "re10k": DatasetDefaults(True, 170, 0.1, 0.9),
    "dl3dv": DatasetDefaults(True, 34, 0.9, 1.0),
    "tartanair": DatasetDefaults(True, 34, 1.0, 0.9),
    "matrixcity": DatasetDefaults(True, 17, 0.8, 1.0),
    "dynamicreplica": DatasetDefaults(False, 34, 0.5, 0.5),
    "pointodyssey": DatasetDefaults(False, 34, 1.0, 1.0),
    "vkitti2": DatasetDefaults(False, 17, 1.0, 0.0),
    "spring": DatasetDefaults(False, 85, 1.0, 0.0),
    "stereo4d": DatasetDefaults(False, 85, 0.2, 0.2),
    "synthetic": DatasetDefaults(False, 17, 1.0, 1.0),
}


class SpecError(ValueError):
    """A sample violates the clip schema. Carries the sample key and the field that is wrong."""

    def __init__(self, key: str, field: str, message: str):
        self.key, self.field = key, field
        super().__init__(f"sample {key!r}, field {field!r}: {message}")


@dataclass
class ClipMeta:
    """`meta.json` of a clip. Unknown keys are an error on read (use `extra` for dataset-specific facts)."""

    dataset: str  # e.g. "re10k"
    sequence: str  # native sequence id
    is_static: bool
    metric_scale: float = 1.0  # stored c2w translation and depth = metres × metric_scale
    depth_unit: str = "m"  # unit of stored depth before metric_scale ("m" when metric, "arbitrary" otherwise)
    depth_weight: float = 1.0
    motion_weight: float = 1.0
    spec_version: str = SPEC_VERSION
    height: int = 0  # frame size; filled in by `Clip.__post_init__` from the frames when 0
    width: int = 0
    frame_format: FrameFormat = "jpg"
    caption: str = ""  # text prompt describing the clip (camera-controlled diffusion); "" when the dataset has none
    extra: dict[str, Any] = field(default_factory=dict)
    # where the unit of c2w/depth comes from: "metric", "metric_estimated" or "arbitrary" (None: inferred from the
    # dataset name and depth_unit, as for spec 1.0 shards; `diff4splat.geometry.scale`)
    scale_source: str | None = None

    def __post_init__(self) -> None:
        if self.scale_source is None:
            self.scale_source = infer_scale_source(self.dataset, self.depth_unit)

    @classmethod
    def for_dataset(cls, dataset: str, sequence: str, **overrides: Any) -> ClipMeta:
        """Meta with the reference's static flag and loss weights for a known dataset name."""
        d = DATASET_DEFAULTS[dataset]
        kw = dict(
            is_static=d.is_static,
            depth_weight=d.depth_weight,
            motion_weight=d.motion_weight,
            scale_source=DATASET_SCALE_SOURCE[dataset],
        )
        kw.update(overrides)
        return cls(dataset=dataset, sequence=sequence, **kw)

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes | str, key: str = "?") -> ClipMeta:
        try:
            d = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SpecError(key, "meta", f"not valid JSON ({e})") from e
        if not isinstance(d, dict):
            raise SpecError(key, "meta", "must be a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise SpecError(key, "meta", f"unknown keys {unknown}")
        missing = [n for n in ("dataset", "sequence", "is_static") if n not in d]
        if missing:
            raise SpecError(key, "meta", f"missing keys {missing}")
        return cls(**d)


@dataclass
class Clip:
    """One clip in memory. Shapes: F frames, H×W pixels, N tracks.

    frames: list of F encoded images (JPEG/PNG bytes) or one mp4 `bytes` (then `meta.frame_format == "mp4"`).
    c2w: (F,4,4) float; fxfycxcy: (F,4) float; timestamps: (F,) float.
    depth: (F,H,W) float | None; depth_valid: (F,H,W) bool | None; tracks_world: (F,N,3) float | None;
    tracks_visible: (F,N) bool | None; flow: (F,H,W,2) float | None; dynamic_mask: (F,H,W) bool | None;
    points_world: (P,3) float | None sparse scene points (SfM) in world coordinates.
    """

    key: str
    frames: list[bytes] | bytes
    c2w: np.ndarray
    fxfycxcy: np.ndarray
    timestamps: np.ndarray
    meta: ClipMeta
    depth: np.ndarray | None = None
    depth_valid: np.ndarray | None = None
    tracks_world: np.ndarray | None = None
    tracks_visible: np.ndarray | None = None
    flow: np.ndarray | None = None
    dynamic_mask: np.ndarray | None = None
    points_world: np.ndarray | None = None

    def __post_init__(self) -> None:
        if isinstance(self.frames, bytes | bytearray):
            self.meta.frame_format = "mp4"
        elif self.frames and (self.meta.height == 0 or self.meta.width == 0):
            self.meta.width, self.meta.height = image_size(self.frames[0])
            if self.frames[0][:8] == PNG_MAGIC:
                self.meta.frame_format = "png"

    @property
    def num_frames(self) -> int:
        return int(np.asarray(self.c2w).shape[0])

    def arrays(self) -> dict[str, np.ndarray]:
        """The array fields that are present, by name."""
        return {n: getattr(self, n) for n in ARRAY_FIELDS if getattr(self, n) is not None}


def decode_frames(clip: Clip, indices: list[int] | None = None) -> np.ndarray:
    """Decode frames `indices` (all when None) of a clip to (F',H,W,3) uint8."""
    if isinstance(clip.frames, bytes | bytearray):
        return decode_video(bytes(clip.frames), indices)
    idx = range(len(clip.frames)) if indices is None else indices
    return np.stack([decode_image(clip.frames[i]) for i in idx])


# --------------------------------------------------------------------------------------------------- validation


_LAST_ROW = np.array([0.0, 0.0, 0.0, 1.0])


def _check(ok: bool, key: str, name: str, message: str) -> None:
    if not ok:
        raise SpecError(key, name, message)


def _check_array(a: Any, key: str, name: str, shape: tuple, kinds: str) -> np.ndarray:
    """Check ndim/shape (None = any) and dtype kind ('f' float, 'b' bool, 'u'/'i' ints). Messages are formatted only
    on failure (the streaming reader runs this for every array of every clip)."""
    if not isinstance(a, np.ndarray):
        raise SpecError(key, name, f"must be a numpy array, got {type(a).__name__}")
    if a.dtype.kind not in kinds:
        raise SpecError(key, name, f"dtype must be of kind {kinds!r}, got {a.dtype}")
    if a.ndim != len(shape) or not all(s is None or s == d for s, d in zip(shape, a.shape, strict=False)):
        raise SpecError(key, name, f"shape must be {tuple('*' if s is None else s for s in shape)}, got {a.shape}")
    return a


def validate_clip(clip: Clip, deep: bool = False, values: bool = True) -> None:
    """Raise `SpecError` (naming key and field) if `clip` violates the schema.

    `deep` also decodes every frame (the verify tool). `values=False` checks meta, shapes, dtypes and cameras but not
    per-pixel values (depth > 0 where valid, NaN pattern of tracks): the streaming reader's cheap check of samples
    that were fully validated when they were written.
    """
    key = clip.key
    _check(
        isinstance(key, str) and bool(KEY_PATTERN.match(key)),
        str(key),
        "key",
        "must match [A-Za-z0-9_-]+ (a flat member name: no folders, dots or path traversal)",
    )
    meta = clip.meta
    _check(isinstance(meta, ClipMeta), key, "meta", "must be a ClipMeta")
    _check(
        meta.spec_version in READABLE_SPEC_VERSIONS,
        key,
        "meta.spec_version",
        f"{meta.spec_version!r} != {SPEC_VERSION!r} (this reader also reads {READABLE_SPEC_VERSIONS[:-1]})",
    )
    _check(isinstance(meta.dataset, str) and bool(meta.dataset), key, "meta.dataset", "must be a non-empty string")
    _check(isinstance(meta.is_static, bool), key, "meta.is_static", "must be a bool")
    _check(isinstance(meta.caption, str), key, "meta.caption", "must be a string")
    for name in ("metric_scale", "depth_weight", "motion_weight"):
        v = getattr(meta, name)
        _check(isinstance(v, int | float) and np.isfinite(v) and v >= 0, key, f"meta.{name}", f"must be >= 0, got {v}")
    _check(meta.metric_scale > 0, key, "meta.metric_scale", "must be > 0")
    _check_scale_source(meta, key)

    c2w = _check_array(clip.c2w, key, "c2w", (None, 4, 4), "f")
    F = c2w.shape[0]
    _check(F >= 1, key, "c2w", "needs at least one frame")
    _check(bool(np.isfinite(c2w).all()), key, "c2w", "has non-finite values")
    _check(float(np.abs(c2w[:, 3] - _LAST_ROW).max()) <= 1e-6, key, "c2w", "last row must be [0, 0, 0, 1]")
    R = c2w[:, :3, :3].astype(np.float64)
    orth = np.abs(R @ R.transpose(0, 2, 1) - np.eye(3)).max()
    _check(orth < 1e-3, key, "c2w", f"rotation is not orthonormal (max |RR^T - I| = {orth:.2e})")
    _check(bool((np.linalg.det(R) > 0).all()), key, "c2w", "rotation has det < 0 (not right-handed)")
    K = _check_array(clip.fxfycxcy, key, "fxfycxcy", (F, 4), "f")
    _check(bool(np.isfinite(K).all() and (K[:, :2] > 0).all()), key, "fxfycxcy", "must be finite with fx, fy > 0")
    t = _check_array(clip.timestamps, key, "timestamps", (F,), "fiu")
    _check(bool(np.isfinite(t).all() and (np.diff(t) >= 0).all()), key, "timestamps", "must be finite, non-decreasing")

    if isinstance(clip.frames, bytes | bytearray):
        _check(meta.frame_format == "mp4", key, "frames", "one bytes object means mp4 (meta.frame_format 'mp4')")
        _check(len(clip.frames) > 0, key, "frames", "empty mp4")
        H, W = meta.height, meta.width
        _check(H > 0 and W > 0, key, "meta.height", "mp4 clips must set meta.height and meta.width")
        if deep:
            try:
                n = decode_video(bytes(clip.frames)).shape
            except Exception as e:
                raise SpecError(key, "frames", f"mp4 does not decode ({e})") from e
            _check(n[0] == F and n[1:3] == (H, W), key, "frames", f"mp4 has shape {n}, expected ({F},{H},{W},3)")
    else:
        _check(isinstance(clip.frames, list | tuple), key, "frames", "must be a list of encoded images or mp4 bytes")
        _check(len(clip.frames) == F, key, "frames", f"{len(clip.frames)} frames but c2w has {F}")
        magic = PNG_MAGIC if meta.frame_format == "png" else JPEG_MAGIC
        for i, fr in enumerate(clip.frames):
            _check(isinstance(fr, bytes) and fr.startswith(magic), key, f"frames[{i}]", f"not {meta.frame_format}")
        H, W = meta.height, meta.width
        _check(H > 0 and W > 0, key, "meta.height", "must be > 0")
        if deep:
            for i, fr in enumerate(clip.frames):
                try:
                    shape = decode_image(fr).shape
                except Exception as e:
                    raise SpecError(key, f"frames[{i}]", f"does not decode ({e})") from e
                _check(shape == (H, W, 3), key, f"frames[{i}]", f"decodes to {shape}, expected ({H},{W},3)")
        else:
            _check(image_size(clip.frames[0]) == (W, H), key, "frames[0]", f"size != meta ({W}x{H})")

    if clip.depth is not None:
        d = _check_array(clip.depth, key, "depth", (F, H, W), "f")
        if clip.depth_valid is not None:
            v = _check_array(clip.depth_valid, key, "depth_valid", (F, H, W), "b")
            if values:
                bad = bool((v & ~(np.isfinite(d) & (d > 0))).any())
                _check(not bad, key, "depth_valid", "marks pixels whose depth is not finite and > 0")
    else:
        _check(clip.depth_valid is None, key, "depth_valid", "given without depth")
    if clip.tracks_world is not None:
        tw = _check_array(clip.tracks_world, key, "tracks_world", (F, None, 3), "f")
        _check(clip.tracks_visible is not None, key, "tracks_visible", "required with tracks_world")
        tv = _check_array(clip.tracks_visible, key, "tracks_visible", (F, tw.shape[1]), "b")
        if values:
            fin = np.isfinite(tw).all(-1)
            _check(bool(fin[tv].all()), key, "tracks_world", "visible points must be finite")
            _check(bool(np.isnan(tw[~tv]).all()), key, "tracks_world", "must be NaN exactly where not visible")
    else:
        _check(clip.tracks_visible is None, key, "tracks_visible", "given without tracks_world")
    if clip.flow is not None:
        _check_array(clip.flow, key, "flow", (F, H, W, 2), "f")
    if clip.dynamic_mask is not None:
        _check_array(clip.dynamic_mask, key, "dynamic_mask", (F, H, W), "b")
    if clip.points_world is not None:
        p = _check_array(clip.points_world, key, "points_world", (None, 3), "f")
        if values:
            _check(bool(np.isfinite(p).all()), key, "points_world", "must be finite")


def _check_scale_source(meta: ClipMeta, key: str) -> None:
    """Scale provenance: one of `SCALE_SOURCES`; nothing of arbitrary scale is labelled metric."""
    src = meta.scale_source
    _check(src in SCALE_SOURCES, key, "meta.scale_source", f"must be one of {SCALE_SOURCES}, got {src!r}")
    if src == "metric":
        _check(
            meta.depth_unit != "arbitrary",
            key,
            "meta.scale_source",
            "'metric' with depth_unit 'arbitrary' (an arbitrary-scale clip is 'arbitrary' or 'metric_estimated')",
        )
        _check(
            DATASET_SCALE_SOURCE.get(meta.dataset) != "arbitrary",
            key,
            "meta.scale_source",
            f"'metric' for {meta.dataset!r}, whose poses have arbitrary scale (use 'metric_estimated' with "
            f"extra.scale_estimator, or 'arbitrary')",
        )
    if src == "metric_estimated":
        _check(
            bool(meta.extra.get("scale_estimator")),
            key,
            "meta.extra",
            "'metric_estimated' needs extra.scale_estimator (what estimated the metric scale)",
        )
    if src == "arbitrary":
        _check(meta.metric_scale == 1.0, key, "meta.metric_scale", "must be 1 for an arbitrary-scale clip")


# --------------------------------------------------------------------------------------------------- tar members


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.require(a, requirements="C"), allow_pickle=False)
    return buf.getvalue()


_NPY_HEADER = re.compile(
    rb"^\x93NUMPY\x01\x00..\{'descr': '([<>|][a-z]\d+)', 'fortran_order': False, 'shape': \(([\d, ]*)\), \}\s*\n$",
    re.S,
)


def _npy_load(data: bytes, key: str, name: str) -> np.ndarray:
    """Load .npy bytes (never pickles). The common v1 C-order header is parsed with a regex: `np.load` parses every
    header with `ast.literal_eval`, which costs more than reading the small arrays of a clip."""
    if len(data) >= 10 and data[6:8] == b"\x01\x00":
        end = 10 + int.from_bytes(data[8:10], "little")
        m = _NPY_HEADER.match(data[:end])
        if m is not None:
            dtype = np.dtype(m.group(1).decode())
            shape = tuple(int(x) for x in m.group(2).split(b",") if x.strip())
            if dtype.kind in "biuf" and len(data) - end == dtype.itemsize * math.prod(shape):
                return np.frombuffer(data, dtype=dtype, offset=end).reshape(shape)
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as e:
        raise SpecError(key, name, f"not a loadable .npy ({e})") from e


def encode_clip(clip: Clip) -> dict[str, bytes]:
    """Validate `clip` and return its tar members as {suffix: bytes} (suffix = member name after `key.`)."""
    validate_clip(clip)
    out: dict[str, bytes] = {}
    if isinstance(clip.frames, bytes | bytearray):
        out["mp4"] = bytes(clip.frames)
    else:
        ext = "png" if clip.meta.frame_format == "png" else "jpg"
        width = max(3, len(str(len(clip.frames) - 1)))
        for i, fr in enumerate(clip.frames):
            out[f"{i:0{width}d}.{ext}"] = fr
    for name, a in clip.arrays().items():
        out[f"{name}.npy"] = _npy_bytes(a)
    out["meta.json"] = clip.meta.to_json()
    return out


def decode_sample(
    sample: dict[str, Any], validate: bool = True, values: bool = True, arrays: tuple[str, ...] | None = None
) -> Clip:
    """Build a `Clip` from a WebDataset sample ({'__key__': K, suffix: bytes}); frames stay encoded.

    `arrays` restricts which optional arrays are loaded (None = all present); `validate`/`values` as in
    `validate_clip`. Raises `SpecError` on any violation.
    """
    key = str(sample.get("__key__", "?"))
    if "meta.json" not in sample:
        raise SpecError(key, "meta", "missing member meta.json")
    meta = ClipMeta.from_json(sample["meta.json"], key)
    frames: list[bytes] | bytes
    if "mp4" in sample:
        frames = sample["mp4"]
    else:
        members = sorted((int(m.group(1)), s) for s in sample if isinstance(s, str) and (m := _FRAME_MEMBER.match(s)))
        _check(bool(members), key, "frames", "no frame members (K.000.jpg ...) and no K.mp4")
        _check([i for i, _ in members] == list(range(len(members))), key, "frames", "frame indices are not 0..F-1")
        frames = [sample[s] for _, s in members]
    loaded: dict[str, np.ndarray] = {}
    for name in ARRAY_FIELDS:
        member = f"{name}.npy"
        if name in REQUIRED_ARRAYS:
            _check(member in sample, key, name, f"missing member {member}")
        if member in sample and (arrays is None or name in REQUIRED_ARRAYS or name in arrays):
            loaded[name] = _npy_load(sample[member], key, name)
    if arrays is not None and "tracks_world" in loaded and "tracks_visible" not in loaded:
        loaded["tracks_visible"] = _npy_load(sample["tracks_visible.npy"], key, "tracks_visible")
    clip = Clip(key=key, frames=frames, meta=meta, **loaded)
    if validate:
        validate_clip(clip, values=values)
    return clip
