"""Streaming clips from shards: `ClipStream`, an `IterableDataset` that yields whole batches of clips (use it with
`DataLoader(batch_size=None)`). It puts together the modules of the clip data path:

1. Shards and samples (`datamodules.shards`): each source's shard list is split over the job's (rank, worker) slots,
   resampled with seeded generators in training and read in order for validation, and its tar members are grouped
   into samples; the streaming half, `ShardStream`, is shared with the latent shards (`datamodules.latents`).
   The source of each sample is drawn by weight (`datamodules.mix.WeightedChoice`, from the slot's seeded generator:
   webdataset's `RandomMix` draws from the process-wide `random` module).
2. Clips (`datamodules.transform.ClipTransform`, the reference's `_frame_sample` and augmentation, §8.2-8.3): frame
   windows, crops and output sizes drawn as `datamodules.sampling` says, cropped, resized, flipped, made canonical and
   scale-normalised.
3. Batches: clips are written straight into the batch tensors (`datamodules.batch.BatchBuffers`); every rank yields
   exactly `batches_per_epoch` batches (split over its workers by `with_epoch`), so DDP ranks never wait for each
   other at the end of an epoch.

Corrupt data: a sample that fails to decode or validate, and a shard that fails to read, are skipped, counted
(`SkipStats`) and logged; when more than `max_skip_rate` of the samples seen (after `skip_rate_min_samples`) were
skipped, iteration raises `DataSkipRateError`.

Every name of the clip data path stays importable from here (`from datamodules.stream import ClipTransform`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from datamodules.batch import BatchBuffers, collate
from datamodules.mix import WeightedChoice
from datamodules.sampling import (
    ClipSamplingConfig,
    SourceConfig,
    batch_size_hw,
    crop_box,
    sample_frames,
    source_from_dict,
    window_rejection,
)
from datamodules.scene_unit import SCENE_FRAMES, scene_frames, scene_unit
from datamodules.shards import (
    DATA_ERRORS,
    DataSkipRateError,
    ShardStream,
    SkipStats,
    Slot,
    expand_shards,
    iter_tar,
    read_shards,
    shard_pipeline,
    slot_shards,
    worker_slot,
)
from datamodules.transform import ClipTransform

__all__ = [
    "DATA_ERRORS",
    "SCENE_FRAMES",
    "ClipSamplingConfig",
    "ClipStream",
    "ClipTransform",
    "DataSkipRateError",
    "ShardStream",
    "SkipStats",
    "Slot",
    "SourceConfig",
    "batch_size_hw",
    "crop_box",
    "expand_shards",
    "iter_tar",
    "read_shards",
    "sample_frames",
    "scene_frames",
    "scene_unit",
    "shard_pipeline",
    "slot_shards",
    "source_from_dict",
    "window_rejection",
    "worker_slot",
]


class ClipStream(ShardStream):
    """Batches of clips from weighted per-dataset sources (see the module docstring and `ShardStream`).

    Args:
        sources: the datasets; each reads `shards` (train) or `val_shards` (train=False).
        sampling: frame selection, augmentation and normalisation.
        batch_size: clips per batch.
        batches_per_epoch: batches each rank yields per epoch (split over its DataLoader workers).
        sample_sources: optional `{name: callable(rng) -> raw sample}` replacing shard reading (in-process synthetic
            data; see `datamodules.synthetic.SyntheticSource`).
        **stream: the `ShardStream` settings (train: resampled, shuffled, augmented stream, else the fixed validation
            slice; seed, shuffle_buffer per source, max_skip_rate, skip_rate_min_samples, rank, world_size, part).
    """

    what = "clip data"

    def __init__(
        self,
        sources: list[SourceConfig],
        sampling: ClipSamplingConfig,
        batch_size: int,
        batches_per_epoch: int,
        sample_sources: dict[str, Callable[[np.random.Generator], dict[str, Any]]] | None = None,
        **stream: Any,
    ):
        super().__init__(batch_size, batches_per_epoch, **stream)
        if not sources:
            raise ValueError("ClipStream needs at least one source")
        self.sources, self.sampling = sources, sampling
        self.sample_sources = sample_sources or {}
        self.urls = {}
        for s in sources:
            if s.name in self.sample_sources:
                continue
            urls = expand_shards(s.shards if self.train else s.val_shards)
            if not urls:
                raise FileNotFoundError(
                    f"source {s.name!r}: no shards match {s.shards if self.train else s.val_shards!r}"
                )
            self.urls[s.name] = urls
        self.transform = ClipTransform(sampling, train=self.train)

    def _samples(self, slot: Slot, rng: np.random.Generator, stats: SkipStats) -> Iterator[tuple[int, dict[str, Any]]]:
        """Raw samples of the sources, each drawn from a source chosen by weight (`WeightedChoice`)."""
        self.transform.rejected_windows = stats.rejected_windows
        iters = []
        for i, s in enumerate(self.sources):
            if s.name in self.sample_sources:
                iters.append(_generated(self.sample_sources[s.name], slot.rng(i + 1)))
            else:
                shards = self._shard_samples(self.urls[s.name], slot, slot.rng(i + 1), stats, f"source {s.name!r}")
                iters.append(iter(shards))
        choose = WeightedChoice([s.weight for s in self.sources], rng)
        while True:
            i = choose() if len(iters) > 1 else 0
            yield i, next(iters[i])

    def _start_batch(self, rng: np.random.Generator) -> tuple[tuple[int, int], BatchBuffers | None]:
        """The batch's output size and, with `augment_on="worker"`, the tensors its clips are written into in place
        (with "device" the clips are per-clip payloads)."""
        out_hw = batch_size_hw(self.sampling, rng if self.train else None)
        if self.sampling.augment_on != "worker":
            return out_hw, None
        return out_hw, BatchBuffers(self.batch_size, self.sampling.num_input + self.sampling.num_output, *out_hw)

    def _decode(
        self,
        raw: dict[str, Any],
        source: int,
        rng: np.random.Generator,
        state: tuple[tuple[int, int], BatchBuffers | None],
        index: int,
    ) -> dict[str, Any]:
        out_hw, buffers = state
        out = None if buffers is None else buffers.slot(index)
        return self.transform(raw, rng, out_hw, self.sources[source], out)

    def _collate(
        self, items: list[Any], state: tuple[tuple[int, int], BatchBuffers | None], stats: SkipStats
    ) -> dict[str, Any]:
        return collate(items, self.sampling.num_input, num_skipped=stats.skipped, buffers=state[1])

    def _source_name(self, source: int) -> str:
        return self.sources[source].name


def _generated(fn: Callable[[np.random.Generator], dict[str, Any]], rng: np.random.Generator) -> Iterator[dict]:
    while True:
        yield fn(rng)
