"""Latent shards for camera-controlled video diffusion: the sample schema, its writer, and `LatentDataModule`.

`python -m datamodules.encode_latents` turns clip shards into latent shards (frames encoded once by the frozen Wan
VAE). A latent sample with key K holds these tar members:

| member             | content                                                                                   |
|--------------------|-------------------------------------------------------------------------------------------|
| K.latents.npy      | (C,T,h,w) float16 normalised Wan VAE latents of F = 1 + 4(T-1) frames                     |
| K.c2w.npy          | (F,4,4) float32 OpenCV c2w in metres, canonical (frame 0 = identity)                      |
| K.fxfycxcy.npy     | (F,4) float32 normalised intrinsics of the cropped and resized H×W frames                 |
| K.first_frame.jpg  | the first frame at H×W (the image condition at evaluation, media logging)                 |
| K.meta.json        | `LatentMeta` (source clip, frame indices, size, caption, VAE identity, spec version)      |

`LatentDataModule` streams them (resampled shards per (seed, rank, worker, epoch), a fixed number of batches per
rank) and adds the caption's prompt embedding from a `diff4splat.models.text.PromptCache`. Batch contract:

| key            | type / shape              | meaning                                                                   |
|----------------|---------------------------|---------------------------------------------------------------------------|
| latents        | float32 (B,C,T,h,w)       | normalised video latents                                                  |
| c2w            | float32 (B,F,4,4)         | metric OpenCV c2w, canonical (first camera = identity)                    |
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

import contextlib
import dataclasses
import fcntl
import io
import json
import logging
import os
import tarfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from datamodules.datamodule import make_loader
from datamodules.stream import (
    DataSkipRateError,
    SkipStats,
    expand_shards,
    shard_samples,
    slot_shards,
    worker_slot,
)

log = logging.getLogger(__name__)

LATENT_SPEC_VERSION = "latent-1.0"
MANIFEST = "manifest.json"
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
    metric_scale: float = 1.0  # of the source clip (the stored c2w are already divided by it)
    is_static: bool = True
    source_shard: str = ""
    spec_version: str = LATENT_SPEC_VERSION

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
        if d.get("spec_version", LATENT_SPEC_VERSION) != LATENT_SPEC_VERSION:
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
    path = Path(out_dir) / MANIFEST
    if not path.exists():
        return {"spec_version": LATENT_SPEC_VERSION, "sources": [], "shards": [], "splits": {}}
    return json.loads(path.read_text())


@contextlib.contextmanager
def _locked(out_dir: Path):
    with open(out_dir / f".{MANIFEST}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@dataclass
class _Shard:
    name: str
    split: str
    samples: int = 0
    bytes: int = 0
    keys: list[str] = field(default_factory=list)
    datasets: dict[str, int] = field(default_factory=dict)


class LatentShardWriter:
    """Write `LatentSample`s to `out_dir/{split}-{index:06d}.tar` atomically (temporary name, then rename) and keep
    `manifest.json` up to date, as `datamodules.write.ShardWriter` does for clips. Resumable: keys of finished shards
    are skipped (`is_done`), unfinished temporary shards are deleted; on an exception the open shard is dropped.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        *,
        source: str,
        split: str = "train",
        maxcount: int = 100,
        maxsize: int = 1 << 30,
    ):
        if maxcount < 1 or maxsize < 1:
            raise ValueError(f"maxcount and maxsize must be >= 1, got {maxcount}, {maxsize}")
        if not split.replace("_", "").isalnum():
            raise ValueError(f"split must be alphanumeric, got {split!r}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.source, self.split, self.maxcount, self.maxsize = source, split, maxcount, maxsize
        manifest = read_latent_manifest(self.out_dir)
        if manifest.get("spec_version") != LATENT_SPEC_VERSION:
            raise ValueError(
                f"{self.out_dir / MANIFEST}: spec version {manifest.get('spec_version')!r} is not "
                f"{LATENT_SPEC_VERSION!r} (a clip shard folder? write latents to their own folder)"
            )
        mine = [s for s in manifest["shards"] if s["split"] == split and self._index(s["name"]) is not None]
        self.done_keys: set[str] = {k for s in mine for k in s["keys"]}
        self.next_index = max((self._index(s["name"]) for s in mine), default=-1) + 1
        for stale in self.out_dir.glob(f".{split}-*.tar.tmp*"):
            stale.unlink()
        self.written_samples = 0
        self.written_shards: list[str] = []
        self._tar: tarfile.TarFile | None = None
        self._tmp: Path | None = None
        self._info: _Shard | None = None

    def _index(self, name: str) -> int | None:
        rest = name.removesuffix(".tar")[len(self.split) + 1 :]
        return int(rest) if name.startswith(self.split + "-") and rest.isdigit() else None

    def is_done(self, key: str) -> bool:
        return key in self.done_keys

    def write(self, sample: LatentSample) -> bool:
        """Validate and append a sample; False (nothing written) when its key is already done."""
        if sample.key in self.done_keys:
            return False
        members = sample.members()
        size = sum(512 + (len(v) + 511) // 512 * 512 for v in members.values())
        if self._info is not None and (self._info.samples >= self.maxcount or self._info.bytes + size > self.maxsize):
            self._finish()
        if self._tar is None:
            name = f"{self.split}-{self.next_index:06d}.tar"
            self._tmp = self.out_dir / f".{name}.tmp{os.getpid()}"
            self._tar = tarfile.open(self._tmp, "w", format=tarfile.USTAR_FORMAT)
            self._info = _Shard(name=name, split=self.split)
        for suffix, data in members.items():
            ti = tarfile.TarInfo(f"{sample.key}.{suffix}")
            ti.size, ti.mtime, ti.mode, ti.uname, ti.gname = len(data), 0, 0o644, "", ""
            self._tar.addfile(ti, io.BytesIO(data))
        info = self._info
        assert info is not None
        info.samples += 1
        info.bytes += size
        info.keys.append(sample.key)
        info.datasets[sample.meta.dataset] = info.datasets.get(sample.meta.dataset, 0) + 1
        self.done_keys.add(sample.key)
        self.written_samples += 1
        if info.samples >= self.maxcount:  # full: finish now, so a later failure cannot drop it
            self._finish()
        return True

    def _finish(self) -> None:
        assert self._tar is not None and self._tmp is not None and self._info is not None
        self._tar.close()
        with open(self._tmp, "rb+") as f:
            os.fsync(f.fileno())
        info = self._info
        info.bytes = self._tmp.stat().st_size
        os.replace(self._tmp, self.out_dir / info.name)
        with _locked(self.out_dir):
            manifest = read_latent_manifest(self.out_dir)
            manifest["shards"] = sorted(
                [s for s in manifest["shards"] if s["name"] != info.name] + [info.__dict__], key=lambda s: s["name"]
            )
            if self.source not in manifest["sources"]:
                manifest["sources"].append(self.source)
            manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            splits: dict[str, dict[str, int]] = {}
            for s in manifest["shards"]:
                d = splits.setdefault(s["split"], {"shards": 0, "samples": 0, "bytes": 0})
                d["shards"], d["samples"], d["bytes"] = (
                    d["shards"] + 1,
                    d["samples"] + s["samples"],
                    d["bytes"] + s["bytes"],
                )
            manifest["splits"] = splits
            tmp = self.out_dir / f".{MANIFEST}.tmp{os.getpid()}"
            tmp.write_text(json.dumps(manifest, indent=1, ensure_ascii=False))
            os.replace(tmp, self.out_dir / MANIFEST)
        self.written_shards.append(info.name)
        self.next_index += 1
        self._tar = self._tmp = self._info = None

    def close(self) -> None:
        """Finish the open shard (if it holds a sample)."""
        if self._tar is not None:
            if self._info is not None and self._info.samples > 0:
                self._finish()
            else:
                self.abort()

    def abort(self) -> None:
        """Drop the open shard without finishing it."""
        if self._tar is not None:
            self._tar.close()
            self._tmp.unlink(missing_ok=True)  # type: ignore[union-attr]
            self._tar = self._tmp = self._info = None

    def __enter__(self) -> LatentShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


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


class LatentStream(IterableDataset):
    """Batches of latent samples (use with `DataLoader(batch_size=None)`).

    Shards are split over the (rank, worker) slots as in `datamodules.stream.ClipStream`; training resamples the
    slot's shards with a generator seeded by (seed, rank, worker, epoch) and mixes samples in a shuffle buffer;
    validation reads the slice in order with the same seed every epoch. Every rank yields exactly
    `batches_per_epoch` batches (split over its workers). Corrupt samples are skipped and counted; past
    `max_skip_rate` iteration raises `DataSkipRateError`. A missing prompt embedding is an error (not a skip).
    """

    def __init__(
        self,
        shards: str | list[str],
        prompts: PromptEmbeddings,
        batch_size: int,
        batches_per_epoch: int,
        train: bool = True,
        seed: int = 0,
        shuffle_buffer: int = 64,
        max_skip_rate: float = 0.05,
        skip_rate_min_samples: int = 50,
        embeds_dtype: torch.dtype = torch.float32,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        super().__init__()
        self.urls = expand_shards(shards)
        if not self.urls:
            raise FileNotFoundError(f"latent data: no shards match {shards!r}")
        self.prompts, self.batch_size, self.batches_per_epoch = prompts, batch_size, batches_per_epoch
        self.train, self.seed, self.shuffle_buffer = train, seed, shuffle_buffer
        self.max_skip_rate, self.skip_rate_min_samples = max_skip_rate, skip_rate_min_samples
        self.embeds_dtype, self.rank, self.world_size = embeds_dtype, rank, world_size
        self.epoch = 0
        self._iterations = 0
        self.stats = SkipStats()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def num_batches(self, worker: int, num_workers: int) -> int:
        n = self.batches_per_epoch
        return n // num_workers + (1 if worker < n % num_workers else 0)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank, world, worker, num_workers = worker_slot(self.rank, self.world_size)
        slot, num_slots = rank * num_workers + worker, world * num_workers
        seq = [self.seed, rank, worker, self.epoch, self._iterations] if self.train else [self.seed, rank, worker]
        self._iterations += 1
        rng = np.random.default_rng(seq)
        self.stats = stats = SkipStats()
        urls = slot_shards(self.urls, slot, num_slots)
        raw = self._samples(urls, rng, stats)
        for _ in range(self.num_batches(worker, num_workers)):
            samples: list[LatentSample] = []
            while len(samples) < self.batch_size:
                sample = next(raw)
                try:
                    samples.append(decode_latent_sample(sample))
                    stats.good += 1
                except Exception as e:  # a corrupt sample: skip, count, go on
                    stats.skipped += 1
                    if len(stats.reasons) < 20:
                        stats.reasons.append(f"{sample.get('__key__')!r} ({sample.get('__url__')}): {e}")
                    log.warning("latent data: skipped %r (%s): %s", sample.get("__key__"), sample.get("__url__"), e)
                self._check_rate(stats)
            yield collate_latents(samples, self.prompts, stats.skipped, self.embeds_dtype)

    def _check_rate(self, stats: SkipStats) -> None:
        if stats.seen >= self.skip_rate_min_samples and stats.rate() > self.max_skip_rate:
            raise DataSkipRateError(
                f"latent data: skipped {stats.skipped} of {stats.seen} samples "
                f"(> {self.max_skip_rate:.1%}); first reasons: {stats.reasons[:5]}"
            )

    def _samples(self, urls: list[str], rng: np.random.Generator, stats: SkipStats) -> Iterator[dict[str, Any]]:
        return shard_samples(urls, rng, stats, self.train, self.shuffle_buffer, "latent data")


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class LatentDataModule(L.LightningDataModule):
    """Latent shards + cached prompt embeddings as batches of the contract in this module's docstring.

    Args:
        shards: training shards (glob, brace pattern or list).
        val_shards: validation shards (None: no validation).
        batch_size: samples per batch (per rank); num_workers: DataLoader workers per rank.
        batches_per_epoch: training batches per rank per epoch; val_batches: validation batches per rank (0: none).
        seed: base seed; shuffle_buffer: raw samples buffered per worker.
        text_cache: `PromptCache` folder (None: zero embeddings of `text_dim`); text_encoder_id: which encoder's
            embeddings (None: the only one in the folder).
        text_dim: embedding width D (4096 for UMT5-XXL); max_len: padded rows (Wan: 512).
        embeds_dtype: dtype of `prompt_embeds` ("float32", "bfloat16", "float16").
        max_skip_rate, skip_rate_min_samples: corrupt-sample tolerance.
        pin_memory, prefetch_factor, persistent_workers, sharing_strategy: DataLoader settings (as ClipDataModule).
    """

    def __init__(
        self,
        shards: str | list[str],
        val_shards: str | list[str] | None = None,
        batch_size: int = 4,
        num_workers: int = 2,
        batches_per_epoch: int = 1000,
        val_batches: int = 0,
        seed: int = 0,
        shuffle_buffer: int = 64,
        text_cache: str | None = None,
        text_encoder_id: str | None = None,
        text_dim: int = 4096,
        max_len: int = 512,
        embeds_dtype: str = "float32",
        max_skip_rate: float = 0.05,
        skip_rate_min_samples: int = 50,
        pin_memory: bool = True,
        prefetch_factor: int = 2,
        persistent_workers: bool = False,
        sharing_strategy: str | None = None,
    ):
        super().__init__()
        if embeds_dtype not in _DTYPES:
            raise ValueError(f"data.embeds_dtype: expected one of {sorted(_DTYPES)}, got {embeds_dtype!r}")
        strategies = torch.multiprocessing.get_all_sharing_strategies()
        if sharing_strategy is not None and sharing_strategy not in strategies:
            raise ValueError(f"data.sharing_strategy: expected one of {sorted(strategies)}, got {sharing_strategy!r}")
        self.shards = shards if isinstance(shards, str) else list(shards)
        self.val_shards = val_shards if val_shards is None or isinstance(val_shards, str) else list(val_shards)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.batches_per_epoch, self.val_batches = batches_per_epoch, val_batches
        self.seed, self.shuffle_buffer = seed, shuffle_buffer
        self.text_cache, self.text_encoder_id = text_cache, text_encoder_id
        self.text_dim, self.max_len, self.embeds_dtype = text_dim, max_len, _DTYPES[embeds_dtype]
        self.max_skip_rate, self.skip_rate_min_samples = max_skip_rate, skip_rate_min_samples
        self.pin_memory, self.prefetch_factor, self.persistent_workers = pin_memory, prefetch_factor, persistent_workers
        self.sharing_strategy = sharing_strategy
        self._train: LatentStream | None = None
        self._val: LatentStream | None = None
        self._epoch = 0

    def prompt_embeddings(self) -> PromptEmbeddings:
        return PromptEmbeddings(self.text_cache, self.text_encoder_id, self.text_dim, self.max_len)

    def _stream(self, shards: str | list[str], batches: int, train: bool) -> LatentStream:
        trainer = getattr(self, "trainer", None)
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (None, None)
        return LatentStream(
            shards,
            self.prompt_embeddings(),
            self.batch_size,
            batches,
            train=train,
            seed=self.seed,
            shuffle_buffer=self.shuffle_buffer,
            max_skip_rate=self.max_skip_rate,
            skip_rate_min_samples=self.skip_rate_min_samples,
            embeds_dtype=self.embeds_dtype,
            rank=rank,
            world_size=world,
        )

    def train_stream(self) -> LatentStream:
        if self._train is None:
            self._train = self._stream(self.shards, self.batches_per_epoch, train=True)
            self._train.set_epoch(self._epoch)
        return self._train

    def val_stream(self) -> LatentStream | None:
        if self.val_batches <= 0 or self.val_shards is None:
            return None
        if not expand_shards(self.val_shards):
            log.warning("latent data: no validation shards match %r; not validated", self.val_shards)
            return None
        if self._val is None:
            self._val = self._stream(self.val_shards, self.val_batches, train=False)
        return self._val

    def _loader(self, stream: LatentStream, persistent: bool) -> DataLoader:
        return make_loader(
            stream, self.num_workers, self.pin_memory, self.prefetch_factor, persistent, self.sharing_strategy
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_stream(), self.persistent_workers)

    def val_dataloader(self) -> DataLoader | list:
        stream = self.val_stream()
        return [] if stream is None else self._loader(stream, False)

    def test_dataloader(self) -> DataLoader | list:
        return self.val_dataloader()

    def state_dict(self) -> dict[str, Any]:
        epoch = self._train.epoch if self._train is not None else self._epoch
        return {"next_epoch": int(epoch) + 1}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._epoch = int(state_dict.get("next_epoch", 0))
        if self._train is not None:
            self._train.set_epoch(self._epoch)


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
