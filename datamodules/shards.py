"""Tar shards as streams of batches: shard lists and their (rank, worker) slots, the tar reader, the skip counters,
and `ShardStream`, the stream base that `datamodules.stream.ClipStream` and `datamodules.latents.LatentStream` share.

Streams run on webdataset (`shard_pipeline`: `ResampledShards` / `SimpleShardList`, its tar reader, `shuffle`,
`with_epoch`):

1. Shards. Each source's shard list (glob / brace pattern / list, sorted) is split over the (rank, worker) slots of
   the job: slot `rank * num_workers + worker` reads `shards[slot::num_slots]`, so no two workers of the job read the
   same shard (with fewer shards than slots, slots share shards and a warning says so). Training resamples shards
   from the slot's slice with a generator seeded by (seed, rank, worker, epoch); validation reads the slice in order,
   with the same seed every epoch, so it sees the same clips each time.
2. Samples. Tar members are grouped by key (`iter_tar`, WebDataset layout); a per-source shuffle buffer mixes clips
   of different shards (training).
3. Batches: every rank yields exactly `batches_per_epoch` batches (split over its workers by `with_epoch`), so DDP
   ranks never wait for each other at the end of an epoch.

Corrupt data: a sample that fails to decode or validate, and a shard that fails to read, are skipped, counted
(`SkipStats`) and logged; when more than `max_skip_rate` of the samples seen (after `skip_rate_min_samples`) were
skipped, iteration raises `DataSkipRateError`.
"""

from __future__ import annotations

import functools
import glob
import logging
import os
import posixpath
import random
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.tariterators import base_plus_ext, tar_file_iterator

from datamodules.holdout import Part, check_part, part_of

log = logging.getLogger(__name__)


# What a corrupt or malformed sample raises while it is decoded and checked: schema errors (SpecError and
# LatentSpecError are ValueErrors), unreadable bytes (numpy, PIL, json, zlib, tar) and missing members. Anything else
# (TypeError, AttributeError, NameError, ...) is a bug in the code and is not counted as bad data.
DATA_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, EOFError, KeyError, zlib.error, tarfile.TarError)


class DataSkipRateError(RuntimeError):
    """Too many corrupt samples: training stops instead of silently learning from a broken data set."""


@dataclass
class SkipStats:
    """Per-worker counters of good and skipped samples."""

    good: int = 0
    skipped: int = 0  # samples that failed to decode/validate/transform (incl. partial ones of broken shards)
    shard_errors: int = 0  # shards that failed to open or read to the end
    reasons: list[str] = field(default_factory=list)  # the first few messages, for reports
    # frame windows redrawn by the reference's filters (`datamodules.sampling.ClipSamplingConfig`'s
    # `min_valid_depth_ratio`, `max_input_rotation`), by reason: "valid_depth", "rotation"
    rejected_windows: dict[str, int] = field(default_factory=lambda: {"valid_depth": 0, "rotation": 0})

    @property
    def seen(self) -> int:
        return self.good + self.skipped

    def rate(self) -> float:
        return self.skipped / max(1, self.seen)


def expand_shards(spec: str | list[str] | None) -> list[str]:
    """Sorted shard paths of a glob, a brace pattern (`{000..009}`), a comma-free list, or a list of those."""
    if spec is None:
        return []
    if isinstance(spec, str):
        spec = [spec]
    out: list[str] = []
    for s in spec:
        if "{" in s and ".." in s:
            import braceexpand

            out.extend(p for pat in braceexpand.braceexpand(s) for p in (glob.glob(pat) or [pat]))
        elif any(c in s for c in "*?["):
            out.extend(glob.glob(s))
        else:
            out.append(s)
    return sorted(set(out))


def slot_shards(urls: list[str], slot: int, num_slots: int) -> list[str]:
    """The shards of one (rank, worker) slot: disjoint across slots when there are at least as many shards."""
    if not urls:
        return []
    if len(urls) >= num_slots:
        return urls[slot::num_slots]
    return [urls[slot % len(urls)]]


def iter_tar(url: str, stats: SkipStats) -> Iterator[dict[str, Any]]:
    """Samples ({'__key__', '__url__', suffix: bytes}) of one tar shard, grouped by key in member order.

    The members come from webdataset's tar reader (`tar_file_iterator`, names normalised by `posixpath.normpath`) and
    split into key and suffix by its rule (`base_plus_ext`: the key keeps the folder part, the suffix starts at the
    first dot of the file name). A read error ends the shard: it is counted in `stats.shard_errors`, and a partially
    read sample is dropped and counted as skipped. Since the key keeps its folder part (``dir/K.c2w.npy`` has key
    ``dir/K``), a member name that points outside the shard (``../K.meta.json``, ``/abs/K.meta.json``) gives a key
    that the clip schema refuses (`datamodules.spec.KEY_PATTERN`): that sample is skipped and counted, and nothing
    takes a file name from it.
    """
    current: dict[str, Any] | None = None
    try:
        # unbuffered: tarfile's stream reader fetches its own 10 KiB records; a BufferedReader below it would copy
        # every byte once more (reading took 1.27x as long)
        with open(url, "rb", buffering=0) as stream:
            for member in tar_file_iterator(stream, rename_files=posixpath.normpath):
                key, suffix = base_plus_ext(member["fname"])
                if key is None:
                    continue
                if current is not None and current["__key__"] != key:
                    yield current
                    current = None
                if current is None:
                    current = {"__key__": key, "__url__": url}
                current[suffix.lower()] = member["data"]
        if current is not None:
            yield current
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:
        stats.shard_errors += 1
        if current is not None:
            stats.skipped += 1
        _note(stats, f"shard {url}: {type(e).__name__}: {e}")


def _note(stats: SkipStats, message: str) -> None:
    if len(stats.reasons) < 20:
        stats.reasons.append(message)
    n = stats.skipped + stats.shard_errors
    if n <= 10 or n % 100 == 0:
        log.warning("data: skipped (%d samples, %d shards so far): %s", stats.skipped, stats.shard_errors, message)


def worker_slot(rank: int | None, world_size: int | None) -> tuple[int, int, int, int]:
    """(rank, world_size, worker, num_workers): explicit rank/world, else torch.distributed, else env RANK/WORLD."""
    if rank is None or world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    info = get_worker_info()
    worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
    return rank, world_size, worker, num_workers


class Slot(NamedTuple):
    """One DataLoader worker of one rank: `index` = rank · workers + worker among `count` = world · workers slots;
    `seed` = the seed sequence of its generators in this pass."""

    index: int
    count: int
    seed: tuple[int, ...]

    def rng(self, stream: int = 0) -> np.random.Generator:
        """Generator `stream` of the slot: 0 draws batches, frames and mixtures; i > 0 belongs to source i - 1."""
        return np.random.default_rng([*self.seed, stream] if stream else list(self.seed))


def _seed_given() -> int:
    """`wds.ResampledShards`'s per-worker seed term: 0, because the seed it is given already holds (seed, rank, worker,
    epoch, pass); its default would read the rank and worker from the environment instead."""
    return 0


def read_shards(
    shards: Iterable[dict[str, Any]],
    stats: SkipStats,
    what: str,
    num_shards: int,
    after_shard: Callable[[], None] | None = None,
    part: Part | None = None,
) -> Iterator[dict[str, Any]]:
    """The raw samples of a stream of webdataset shard items ({'url': path}), read by `iter_tar`; ``after_shard`` runs
    after each shard (skip-rate checks); with ``part``, only the samples of that half of the held-out data
    (`datamodules.holdout.part_of` of their key). Once every one of the slice's ``num_shards`` shards was read without
    giving a sample since the last sample, the slice has none to give: `DataSkipRateError` naming ``what``."""
    dry: set[str] = set()
    for shard in shards:
        url, produced = shard["url"], False
        for sample in iter_tar(url, stats):
            if part is not None and part_of(sample["__key__"]) != part:
                continue
            produced = True
            yield sample
        if produced:
            dry.clear()
        else:
            dry.add(url)
            if len(dry) >= num_shards:
                of = "" if part is None else f" of the {part} half of the held-out clips"
                raise DataSkipRateError(f"{what}: no readable sample{of} in {num_shards} shards {sorted(dry)[:3]}")
        if after_shard is not None:
            after_shard()


def shard_pipeline(
    urls: list[str],
    rng: np.random.Generator,
    stats: SkipStats,
    train: bool,
    shuffle_buffer: int,
    what: str,
    after_shard: Callable[[], None] | None = None,
    part: Part | None = None,
) -> wds.DataPipeline:
    """Endless raw samples of a shard slice, as a webdataset pipeline: training draws shards with replacement
    (`wds.ResampledShards`) and mixes their samples in a buffer of ``shuffle_buffer`` (`wds.shuffle`), both seeded
    from ``rng``; evaluation reads the shards in order, again and again (`wds.SimpleShardList`, `.repeat()`). Shards
    are read by `read_shards` (``what``, ``after_shard`` and ``part`` as there)."""
    shard_seed, shuffle_seed = (int(s) for s in rng.integers(0, 2**31, 2))
    if train:
        shards = wds.ResampledShards(urls, seed=shard_seed, worker_seed=_seed_given, deterministic=True)
    else:
        shards = wds.SimpleShardList(urls)
    read = functools.partial(
        read_shards, stats=stats, what=what, num_shards=len(urls), after_shard=after_shard, part=part
    )
    stages = [shards, read]
    if train and shuffle_buffer > 1:
        stages.append(wds.shuffle(shuffle_buffer, initial=shuffle_buffer, rng=random.Random(shuffle_seed)))
    pipeline = wds.DataPipeline(*stages)
    return pipeline if train else pipeline.repeat()


class ShardStream(IterableDataset):
    """Whole batches from tar shards (use with `DataLoader(batch_size=None)`): what `datamodules.stream.ClipStream`
    and `datamodules.latents.LatentStream` share.

    - Shards: every shard list is split over the job's (rank, worker) slots (`slot_shards`) and read through
      `shard_pipeline`: resampled and shuffled in training, in order for evaluation.
    - Seeds: a pass draws from generators seeded by (seed, rank, worker, epoch, pass) in training and by
      (seed, rank, worker) for evaluation, which therefore sees the same samples every time (`Slot`).
    - Length: each rank yields exactly `batches_per_epoch` batches per pass, split over its DataLoader workers
      (webdataset's `with_epoch` per worker), so DDP ranks never wait for each other at the end of an epoch.
    - Corrupt data: a sample that `_decode` refuses is skipped, counted (`stats`) and logged; when more than
      `max_skip_rate` of the samples seen (after `skip_rate_min_samples`) were skipped, iteration raises
      `DataSkipRateError`.

    Subclasses give `_samples` (endless (source index, raw sample) pairs, from `_shard_samples`), `_decode` (raw sample
    → item, raising on a corrupt one) and `_collate` (items → batch), and may draw per-batch state in `_start_batch`.

    Args:
        batch_size: samples per batch.
        batches_per_epoch: batches each rank yields per epoch (split over its DataLoader workers).
        train: resampled, shuffled stream; else the fixed evaluation slice.
        seed: base seed; the generators use (seed, rank, worker, epoch, pass).
        shuffle_buffer: raw samples buffered per shard list (train).
        max_skip_rate: stop with `DataSkipRateError` when more than this fraction of samples was skipped ...
        skip_rate_min_samples: ... once this many samples were seen.
        rank, world_size: override the detected distributed rank (tests, custom launchers).
        part: evaluation only: read the clips of this half of the held-out shards (`datamodules.holdout`: "val" or
            "test"); None reads them all.
    """

    what = "data"  # names the stream in errors and logs

    def __init__(
        self,
        batch_size: int,
        batches_per_epoch: int,
        train: bool = True,
        seed: int = 0,
        shuffle_buffer: int = 64,
        max_skip_rate: float = 0.05,
        skip_rate_min_samples: int = 50,
        rank: int | None = None,
        world_size: int | None = None,
        part: Part | None = None,
    ):
        super().__init__()
        if part is not None and train:
            raise ValueError("ShardStream: `part` selects held-out clips; a training stream reads all of its shards")
        self.batch_size, self.batches_per_epoch = batch_size, batches_per_epoch
        self.train, self.seed, self.shuffle_buffer = train, seed, shuffle_buffer
        self.max_skip_rate, self.skip_rate_min_samples = max_skip_rate, skip_rate_min_samples
        self.rank, self.world_size = rank, world_size
        self.part = None if part is None else check_part(part)
        self.epoch = 0  # set by the DataModule/loader before each epoch (workers get a copy)
        self._iterations = 0  # advances per pass inside persistent workers
        self.stats = SkipStats()  # of the latest pass in this process

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def num_batches(self, worker: int, num_workers: int) -> int:
        """Batches yielded by one worker: the rank's total split as evenly as possible."""
        n = self.batches_per_epoch
        return n // num_workers + (1 if worker < n % num_workers else 0)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank, world, worker, num_workers = worker_slot(self.rank, self.world_size)
        seed = (self.seed, rank, worker, self.epoch, self._iterations) if self.train else (self.seed, rank, worker)
        self._iterations += 1
        slot = Slot(rank * num_workers + worker, world * num_workers, seed)
        self.stats = stats = SkipStats()
        n = self.num_batches(worker, num_workers)
        if n == 0:  # with_epoch(0) would not stop
            return iter(())
        rng = slot.rng()
        pipeline = wds.DataPipeline(
            functools.partial(self._samples, slot, rng, stats),
            functools.partial(self._batches, rng=rng, stats=stats),
        )
        return iter(pipeline.with_epoch(n))

    def _shard_samples(
        self, urls: list[str], slot: Slot, rng: np.random.Generator, stats: SkipStats, what: str
    ) -> wds.DataPipeline:
        """Endless raw samples of the slot's share of ``urls`` (`shard_pipeline`)."""
        if len(urls) < slot.count and self.train:
            log.warning("%s: %d shards for %d (rank, worker) slots: slots share shards", what, len(urls), slot.count)
        after_shard = functools.partial(self._check_rate, stats)
        shards = slot_shards(urls, slot.index, slot.count)
        return shard_pipeline(shards, rng, stats, self.train, self.shuffle_buffer, what, after_shard, self.part)

    def _batches(
        self, samples: Iterator[tuple[int, dict[str, Any]]], rng: np.random.Generator, stats: SkipStats
    ) -> Iterator[dict[str, Any]]:
        """Endless batches of `batch_size` decoded samples (the webdataset stage after `_samples`)."""
        while True:
            state = self._start_batch(rng)
            items: list[Any] = []
            while len(items) < self.batch_size:
                source, raw = next(samples)
                try:
                    items.append(self._decode(raw, source, rng, state, len(items)))
                    stats.good += 1
                except DATA_ERRORS as e:  # a corrupt sample: skip, count, go on (a bug in the code propagates)
                    stats.skipped += 1
                    _note(
                        stats,
                        f"{self._source_name(source)} sample {raw.get('__key__')!r} ({raw.get('__url__')}): "
                        f"{type(e).__name__}: {e}",
                    )
                self._check_rate(stats)
            yield self._collate(items, state, stats)

    def _check_rate(self, stats: SkipStats) -> None:
        if stats.seen >= self.skip_rate_min_samples and stats.rate() > self.max_skip_rate:
            raise DataSkipRateError(
                f"{self.what}: skipped {stats.skipped} of {stats.seen} samples ({stats.rate():.1%} > max_skip_rate "
                f"{self.max_skip_rate:.1%}) and {stats.shard_errors} shards; first reasons: {stats.reasons[:5]}"
            )

    def _samples(self, slot: Slot, rng: np.random.Generator, stats: SkipStats) -> Iterator[tuple[int, dict[str, Any]]]:
        raise NotImplementedError

    def _start_batch(self, rng: np.random.Generator) -> Any:
        return None

    def _decode(self, raw: dict[str, Any], source: int, rng: np.random.Generator, state: Any, index: int) -> Any:
        raise NotImplementedError

    def _collate(self, items: list[Any], state: Any, stats: SkipStats) -> dict[str, Any]:
        raise NotImplementedError

    def _source_name(self, source: int) -> str:
        return self.what
