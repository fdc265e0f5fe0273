"""Latent shards for camera-controlled video diffusion: the sample schema, its writer, and `LatentDataModule`.

`python -m datamodules.encode_latents` turns clip shards into latent shards (frames encoded once by the frozen Wan
VAE). A latent sample with key K holds these tar members:

| member             | content                                                                                   |
|--------------------|-------------------------------------------------------------------------------------------|
| K.latents.npy      | (C,T,h,w) float16 normalised Wan VAE latents of F = 1 + 4(T-1) frames                     |
| K.c2w.npy          | (F,4,4) float32 OpenCV c2w in the sample's `pose_scale`, canonical (frame 0 = identity)   |
| K.fxfycxcy.npy     | (F,4) float32 normalised intrinsics of the cropped and resized H×W frames                 |
| K.first_frame.jpg  | the first frame at H×W (the image condition at evaluation, media logging)                 |
| K.meta.json        | `LatentMeta` (source clip, frame indices, size, caption, VAE identity, spec version)      |

Pose scale (`diff4splat.geometry.scale`): ``pose_scale="scene"`` (the default of `encode_latents` and of
`conf/data/latents.yaml`) = the window's cameras in scene units (the mean distance from the first camera of the
points its frames see is 1; the LRDM's rule, from depth, sparse points, tracks or the camera heuristic:
`scale_method`), so every source gives the camera model one unit whatever its provenance; ``"metric"`` = metres,
written only from clips whose `scale_source` is ``metric`` or ``metric_estimated``. `scale_source` is the source
clip's provenance; a sample that says ``metric`` poses of an ``arbitrary`` source is refused. Spec latent-1.0 shards
(before these fields) still read as ``pose_scale="metric"`` with the provenance inferred from the dataset name, so
their arbitrary-scale samples are refused and a ``scene`` data module refuses all of them.

`LatentDataModule` streams them (resampled shards per (seed, rank, worker, epoch), a fixed number of batches per
rank) and adds the caption's prompt embedding from a `diff4splat.models.text.PromptCache`. Batch contract:

| key            | type / shape              | meaning                                                                   |
|----------------|---------------------------|---------------------------------------------------------------------------|
| latents        | float32 (B,C,T,h,w)       | normalised video latents                                                  |
| c2w            | float32 (B,F,4,4)         | OpenCV c2w in `pose_scale` units, canonical (first camera = identity)     |
| fxfycxcy       | float32 (B,F,4)           | normalised intrinsics                                                     |
| prompt_embeds  | float32 (B,max_len,D)     | cached UMT5 rows of the caption, zero-padded (the "" prompt when empty)   |
| has_prompt     | bool (B,)                 | False where the caption is empty                                          |
| first_frame    | float32 (B,3,H,W)         | first frame in [0,1]                                                      |
| height, width  | int                       | frame size H, W                                                           |
| key            | list[str] (B)             | `<dataset>/<sample key>`                                                  |
| caption        | list[str] (B)             | the captions (for logs)                                                   |
| num_skipped    | int                       | corrupt samples skipped so far by the worker that made this batch         |
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from datamodules.datamodule import StreamDataModule
from datamodules.holdout import Part
from datamodules.shards import ShardStream, SkipStats, Slot, expand_shards
from datamodules.write import TarShardWriter, read_manifest
from diff4splat.geometry.scale import SCALE_SOURCES, infer_scale_source

log = logging.getLogger(__name__)

LATENT_SPEC_VERSION = "latent-1.1"
READABLE_LATENT_VERSIONS = ("latent-1.0", LATENT_SPEC_VERSION)  # 1.0: metric poses, no provenance fields
POSE_SCALES = ("scene", "metric")
MEMBERS = ("latents.npy", "c2w.npy", "fxfycxcy.npy", "first_frame.jpg", "meta.json")


class LatentSpecError(ValueError):
    """A latent sample violates the schema; names the sample key and the member."""

    def __init__(self, key: str, member: str, message: str):
        self.key, self.member = key, member
        super().__init__(f"latent sample {key!r}, member {member!r}: {message}")


@dataclass
class LatentMeta:
    """`meta.json` of a latent sample. Unknown keys are an error on read."""

    dataset: str
    sequence: str
    clip_key: str  # key of the source clip in its shard
    frame_indices: list[int]  # source frames of the window (F of them)
    height: int
    width: int
    num_frames: int
    latent_shape: list[int]  # (C, T, h, w)
    vae: str  # identity of the VAE (local folder or "tiny(...)")
    caption: str = ""
    metric_scale: float = 1.0  # of the source clip (stored units per metre)
    is_static: bool = True
    source_shard: str = ""
    spec_version: str = LATENT_SPEC_VERSION
    pose_scale: str = "metric"  # unit of c2w.npy: "scene" or "metric" (latent-1.0 shards: "metric")
    scale_source: str | None = None  # provenance of the source clip (None: inferred from the dataset name)
    scene_scale: float = 1.0  # pose_scale "scene": source-clip units -> scene units factor
    scale_method: str = ""  # pose_scale "scene": what measured it (`diff4splat.geometry.scale.SCALE_METHODS`)

    def __post_init__(self) -> None:
        if self.scale_source is None:
            self.scale_source = infer_scale_source(self.dataset)

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, data: bytes | str, key: str = "?") -> LatentMeta:
        try:
            d = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise LatentSpecError(key, "meta.json", f"not valid JSON ({e})") from e
        if not isinstance(d, dict):
            raise LatentSpecError(key, "meta.json", "must be a JSON object")
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise LatentSpecError(key, "meta.json", f"unknown keys {unknown}")
        missing = [n for n, f in names.items() if n not in d and f.default is dataclasses.MISSING]
        if missing:
            raise LatentSpecError(key, "meta.json", f"missing keys {missing}")
        if d.get("spec_version", LATENT_SPEC_VERSION) not in READABLE_LATENT_VERSIONS:
            raise LatentSpecError(key, "meta.json", f"spec_version {d['spec_version']!r} != {LATENT_SPEC_VERSION!r}")
        if not isinstance(d.get("caption", ""), str):
            raise LatentSpecError(key, "meta.json", "caption must be a string")
        return cls(**d)


@dataclass
class LatentSample:
    """One latent sample in memory (see the module docstring for shapes)."""

    key: str
    latents: np.ndarray  # (C,T,h,w) float16
    c2w: np.ndarray  # (F,4,4) float32
    fxfycxcy: np.ndarray  # (F,4) float32
    first_frame: bytes  # JPEG
    meta: LatentMeta

    def validate(self) -> None:
        key, m = self.key, self.meta
        if not key or "." in key or "/" in key:
            raise LatentSpecError(key, "key", "must be non-empty without dots or slashes")
        C, T, h, w = m.latent_shape
        checks = [
            (
                "latents.npy",
                self.latents.shape == (C, T, h, w) and self.latents.dtype == np.float16,
                f"must be float16 {tuple(m.latent_shape)}, got {self.latents.dtype} {self.latents.shape}",
            ),
            ("latents.npy", bool(np.isfinite(self.latents).all()), "has non-finite values"),
            (
                "c2w.npy",
                self.c2w.shape == (m.num_frames, 4, 4) and self.c2w.dtype == np.float32,
                f"must be float32 ({m.num_frames},4,4), got {self.c2w.dtype} {self.c2w.shape}",
            ),
            ("c2w.npy", bool(np.isfinite(self.c2w).all()), "has non-finite values"),
            (
                "fxfycxcy.npy",
                self.fxfycxcy.shape == (m.num_frames, 4) and self.fxfycxcy.dtype == np.float32,
                f"must be float32 ({m.num_frames},4), got {self.fxfycxcy.dtype} {self.fxfycxcy.shape}",
            ),
            ("meta.json", len(m.frame_indices) == m.num_frames, "frame_indices must list num_frames frames"),
            ("first_frame.jpg", self.first_frame[:3] == b"\xff\xd8\xff", "must be a JPEG"),
            ("meta.json", m.pose_scale in POSE_SCALES, f"pose_scale must be one of {POSE_SCALES}"),
            ("meta.json", m.scale_source in SCALE_SOURCES, f"scale_source must be one of {SCALE_SOURCES}"),
            (
                "meta.json",
                not (m.pose_scale == "metric" and m.scale_source == "arbitrary"),
                f"metric poses from an arbitrary-scale source ({m.dataset}): re-encode with --pose-scale scene",
            ),
        ]
        for member, ok, message in checks:
            if not ok:
                raise LatentSpecError(key, member, message)

    def members(self) -> dict[str, bytes]:
        """Validated tar members {suffix: bytes}."""
        self.validate()
        return {
            "latents.npy": _npy_bytes(self.latents),
            "c2w.npy": _npy_bytes(self.c2w),
            "fxfycxcy.npy": _npy_bytes(self.fxfycxcy),
            "first_frame.jpg": self.first_frame,
            "meta.json": self.meta.to_json(),
        }


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.require(a, requirements="C"), allow_pickle=False)
    return buf.getvalue()


def _npy(sample: Mapping[str, Any], key: str, member: str) -> np.ndarray:
    if member not in sample:
        raise LatentSpecError(key, member, "missing")
    try:
        return np.load(io.BytesIO(sample[member]), allow_pickle=False)
    except Exception as e:
        raise LatentSpecError(key, member, f"not a loadable .npy ({e})") from e


def decode_latent_sample(sample: Mapping[str, Any]) -> LatentSample:
    """A `LatentSample` from raw tar members ({'__key__': K, suffix: bytes}); `LatentSpecError` when invalid."""
    key = str(sample.get("__key__", "?"))
    if "meta.json" not in sample:
        raise LatentSpecError(key, "meta.json", "missing")
    if "first_frame.jpg" not in sample:
        raise LatentSpecError(key, "first_frame.jpg", "missing")
    meta = LatentMeta.from_json(sample["meta.json"], key)
    out = LatentSample(
        key=key,
        latents=_npy(sample, key, "latents.npy"),
        c2w=_npy(sample, key, "c2w.npy"),
        fxfycxcy=_npy(sample, key, "fxfycxcy.npy"),
        first_frame=sample["first_frame.jpg"],
        meta=meta,
    )
    out.validate()
    return out


# ------------------------------------------------------------------------------------------------------ writer


def read_latent_manifest(out_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a latent shard folder (an empty one when none exists yet)."""
    return read_manifest(out_dir, LATENT_SPEC_VERSION)


class LatentShardWriter(TarShardWriter):
    """Write `LatentSample`s to `out_dir/{split}-{index:06d}.tar` atomically and resumably, keeping `manifest.json`
    up to date (`datamodules.write.TarShardWriter`, as clips are written). Manifest counters per shard and split:
    samples, bytes, samples per dataset."""

    spec_version = LATENT_SPEC_VERSION
    counts = ("samples",)
    folder_hint = " (a clip shard folder? write latents to their own folder)"

    def write(self, sample: LatentSample) -> bool:
        """Validate and append a sample; False (nothing written) when its key is already done. Raises
        `LatentSpecError` naming the key and member if the sample violates the schema (nothing is written then)."""
        if self.is_done(sample.key):
            return False
        return self.add(sample.key, sample.members(), sample.meta.dataset)


# ------------------------------------------------------------------------------------------------------ reader


class PromptEmbeddings:
    """Caption -> padded-row source for the stream: a `PromptCache` (opened lazily, in the worker) or zeros.

    Empty captions get the cached embedding of "" (what CFG dropout also feeds); without a cache every prompt is
    `max_len` zero rows of `dim`.
    """

    def __init__(self, root: str | None, encoder_id: str | None, dim: int, max_len: int, memo: int = 256):
        self.root, self.encoder_id, self.dim, self.max_len, self.memo = root, encoder_id, dim, max_len, memo
        self._cache = None
        self._memo: dict[str, torch.Tensor] = {}

    def rows(self, caption: str) -> torch.Tensor:  # -> [L, D] float32 (L <= max_len)
        if self.root is None:
            return torch.zeros(0, self.dim)
        if caption in self._memo:
            return self._memo[caption]
        if self._cache is None:
            from diff4splat.models.text import PromptCache

            self._cache = PromptCache(self.root, encoder_id=self.encoder_id)
        emb = self._cache.load(caption).float()[: self.max_len]
        if emb.shape[-1] != self.dim:
            raise ValueError(
                f"prompt cache {self.root}: embeddings have dim {emb.shape[-1]}, data.text_dim is {self.dim}"
            )
        if len(self._memo) >= self.memo:
            self._memo.pop(next(iter(self._memo)))
        self._memo[caption] = emb
        return emb


def collate_latents(
    samples: list[LatentSample],
    prompts: PromptEmbeddings,
    num_skipped: int = 0,
    embeds_dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    """Stack samples of one size into the batch contract (module docstring)."""
    from PIL import Image

    from diff4splat.models.text import pad_prompt_embeds

    shapes = {(s.latents.shape, s.c2w.shape, s.meta.height, s.meta.width) for s in samples}
    if len(shapes) > 1:
        raise ValueError(
            f"latent batch mixes sample sizes {sorted(map(str, shapes))} "
            f"(keys {[s.key for s in samples]}): use one latent folder per size"
        )
    frames = []
    for s in samples:
        with Image.open(io.BytesIO(s.first_frame)) as im:
            arr = np.array(im.convert("RGB"))
        if arr.shape[:2] != (s.meta.height, s.meta.width):
            raise LatentSpecError(
                s.key, "first_frame.jpg", f"size {arr.shape[:2]} != meta ({s.meta.height}, {s.meta.width})"
            )
        frames.append(torch.from_numpy(arr).permute(2, 0, 1))
    captions = [s.meta.caption for s in samples]
    embeds = pad_prompt_embeds([prompts.rows(c) for c in captions], prompts.max_len).to(embeds_dtype)
    return {
        "latents": torch.from_numpy(np.stack([s.latents for s in samples])).float(),
        "c2w": torch.from_numpy(np.stack([s.c2w for s in samples])),
        "fxfycxcy": torch.from_numpy(np.stack([s.fxfycxcy for s in samples])),
        "prompt_embeds": embeds,
        "has_prompt": torch.tensor([bool(c) for c in captions], dtype=torch.bool),
        "first_frame": torch.stack(frames).float().div_(255.0),
        "height": samples[0].meta.height,
        "width": samples[0].meta.width,
        "key": [f"{s.meta.dataset}/{s.key}" for s in samples],
        "caption": captions,
        "num_skipped": num_skipped,
    }


class LatentStream(ShardStream):
    """Batches of latent samples (use with `DataLoader(batch_size=None)`).

    Streamed as `datamodules.shards.ShardStream` streams clips: shards split over the (rank, worker) slots; training
    resamples the slot's shards with generators seeded by (seed, rank, worker, epoch) and mixes samples in a shuffle
    buffer; validation reads the slice in order with the same seed every epoch. Every rank yields exactly
    `batches_per_epoch` batches (split over its workers). Corrupt samples are skipped and counted; past
    `max_skip_rate` iteration raises `DataSkipRateError`. A missing prompt embedding is an error (not a skip).
    """

    what = "latent data"

    def __init__(
        self,
        shards: str | list[str],
        prompts: PromptEmbeddings,
        batch_size: int,
        batches_per_epoch: int,
        embeds_dtype: torch.dtype = torch.float32,
        pose_scale: str = "scene",
        **stream: Any,
    ):
        super().__init__(batch_size, batches_per_epoch, **stream)
        self.urls = expand_shards(shards)
        if not self.urls:
            raise FileNotFoundError(f"latent data: no shards match {shards!r}")
        if pose_scale not in POSE_SCALES:
            raise ValueError(f"data.pose_scale: expected one of {POSE_SCALES}, got {pose_scale!r}")
        self.prompts, self.embeds_dtype, self.pose_scale = prompts, embeds_dtype, pose_scale

    def _samples(self, slot: Slot, rng: np.random.Generator, stats: SkipStats) -> Iterator[tuple[int, dict[str, Any]]]:
        for raw in self._shard_samples(self.urls, slot, slot.rng(1), stats, self.what):
            yield 0, raw

    def _decode(self, raw: dict[str, Any], source: int, rng: np.random.Generator, state: Any, index: int) -> Any:
        sample = decode_latent_sample(raw)
        if sample.meta.pose_scale != self.pose_scale:  # never mix units: refused, counted, and loud past the rate
            raise LatentSpecError(
                sample.key,
                "meta.json",
                f"pose_scale {sample.meta.pose_scale!r}, but data.pose_scale is {self.pose_scale!r} (re-encode with "
                f"encode_latents --pose-scale {self.pose_scale})",
            )
        return sample

    def _collate(self, items: list[Any], state: Any, stats: SkipStats) -> dict[str, Any]:
        return collate_latents(items, self.prompts, stats.skipped, self.embeds_dtype)


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class LatentDataModule(StreamDataModule):
    """Latent shards + cached prompt embeddings as batches of the contract in this module's docstring.

    Args:
        shards: training shards (glob, brace pattern or list).
        val_shards: held-out shards (None: no validation or test): validation reads one half of their samples,
            test the other (`datamodules.holdout.part_of`).
        text_cache: `PromptCache` folder (None: zero embeddings of `text_dim`); text_encoder_id: which encoder's
            embeddings (None: the only one in the folder).
        text_dim: embedding width D (4096 for UMT5-XXL); max_len: padded rows (Wan: 512).
        embeds_dtype: dtype of `prompt_embeds` ("float32", "bfloat16", "float16").
        pose_scale: the camera unit the model trains in ("scene" or "metric"); samples in the other are refused.
        **stream: the `datamodules.datamodule.StreamDataModule` settings (batch_size, num_workers, batches_per_epoch,
            val_batches, seed, shuffle_buffer, max_skip_rate, skip_rate_min_samples, pin_memory, prefetch_factor,
            persistent_workers, sharing_strategy).
    """

    def __init__(
        self,
        shards: str | list[str],
        val_shards: str | list[str] | None = None,
        text_cache: str | None = None,
        text_encoder_id: str | None = None,
        text_dim: int = 4096,
        max_len: int = 512,
        embeds_dtype: str = "float32",
        pose_scale: str = "scene",
        **stream: Any,
    ):
        super().__init__(**stream)
        if pose_scale not in POSE_SCALES:
            raise ValueError(f"data.pose_scale: expected one of {POSE_SCALES}, got {pose_scale!r}")
        self.pose_scale = pose_scale
        if embeds_dtype not in _DTYPES:
            raise ValueError(f"data.embeds_dtype: expected one of {sorted(_DTYPES)}, got {embeds_dtype!r}")
        self.shards = shards if isinstance(shards, str) else list(shards)
        self.val_shards = val_shards if val_shards is None or isinstance(val_shards, str) else list(val_shards)
        self.text_cache, self.text_encoder_id = text_cache, text_encoder_id
        self.text_dim, self.max_len, self.embeds_dtype = text_dim, max_len, _DTYPES[embeds_dtype]

    def prompt_embeddings(self) -> PromptEmbeddings:
        return PromptEmbeddings(self.text_cache, self.text_encoder_id, self.text_dim, self.max_len)

    def _stream(
        self, shards: str | list[str], batches: int, train: bool, seed: int, part: Part | None = None
    ) -> LatentStream:
        return LatentStream(
            shards,
            self.prompt_embeddings(),
            self.batch_size,
            batches,
            embeds_dtype=self.embeds_dtype,
            pose_scale=self.pose_scale,
            train=train,
            seed=seed,
            shuffle_buffer=self.shuffle_buffer,
            part=part,
            **self._stream_options(),
        )

    def _make_train_stream(self, seed: int) -> LatentStream:
        return self._stream(self.shards, self.batches_per_epoch, True, seed)

    def _make_eval_stream(self, part: Part) -> LatentStream | None:
        if self.val_batches <= 0 or self.val_shards is None:
            return None
        if not expand_shards(self.val_shards):
            log.warning("latent data: no validation shards match %r; not validated", self.val_shards)
            return None
        return self._stream(self.val_shards, self.val_batches, False, self.seed, part)


__all__ = [
    "LATENT_SPEC_VERSION",
    "LatentDataModule",
    "LatentMeta",
    "LatentSample",
    "LatentShardWriter",
    "LatentSpecError",
    "LatentStream",
    "PromptEmbeddings",
    "collate_latents",
    "decode_latent_sample",
]
