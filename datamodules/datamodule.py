"""`ClipDataModule`: the LightningDataModule over weighted clip sources (`conf/data/*.yaml`), and `StreamDataModule`,
the part it shares with `datamodules.latents.LatentDataModule` (loaders, epochs, resume seeds).

    dm = ClipDataModule(
        sources={"re10k": {"shards": "/data/shards/re10k/train-*.tar", "val_shards": ".../val-*.tar",
                           "weight": 1.0, "max_gap": 170}},
        sampling={"num_input": 5, "num_output": 8, "resolution": 224},
        batch_size=4, num_workers=4, batches_per_epoch=1000, val_batches=20,
    )

Every batch follows the contract of `datamodules.batch` after `on_after_batch_transfer` (`finish_batch`: images
become float there, and with `sampling.augment_on="device"` the per-pixel crop/resize runs there, on the GPU in
training).
The stream is seeded per (seed, rank, worker, epoch); the epoch counter and the global step are part of the
DataModule state saved in checkpoints, and a run resumed at step S draws its training clips from (seed, S) instead of
seed (`resume_seed`), so a restart continues with new samples instead of replaying those it saw before the stop.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from datamodules.batch import finish_batch
from datamodules.holdout import SEED_OFFSET, Part
from datamodules.sampling import ClipSamplingConfig, SourceConfig, source_from_dict
from datamodules.shards import ShardStream, expand_shards
from datamodules.stream import ClipStream

log = logging.getLogger(__name__)


class _EpochLoader(DataLoader):
    """DataLoader that advances the stream's epoch before each pass (non-persistent workers get the new value)."""

    _passes = 0

    def __iter__(self):
        if self._passes > 0:
            self.dataset.set_epoch(self.dataset.epoch + 1)  # type: ignore[attr-defined]
        self._passes += 1
        return super().__iter__()


class StreamDataModule(L.LightningDataModule):
    """What `ClipDataModule` and `datamodules.latents.LatentDataModule` share: DataLoader settings over one
    `datamodules.shards.ShardStream` per split, the epoch counter and the resume step in the checkpointed state.
    Subclasses build the streams (`_make_train_stream(seed)`, `_make_eval_stream(part)`, None: no validation).
    Validation and test read disjoint halves of the held-out data (`datamodules.holdout`): the checkpoint that
    validation selects is tested on clips it was not selected on.

    Args:
        batch_size: samples per batch (per rank).
        num_workers: DataLoader workers per rank.
        batches_per_epoch: training batches per rank per epoch (every rank gets the same number).
        val_batches: validation batches per rank (the same samples every time), and as many test batches; 0 disables
            validation and test.
        seed: base seed of the streams.
        shuffle_buffer: raw samples buffered per source and worker.
        max_skip_rate, skip_rate_min_samples: corrupt-sample tolerance (see `datamodules.shards.ShardStream`).
        pin_memory, prefetch_factor, persistent_workers: DataLoader settings.
        sharing_strategy: torch.multiprocessing sharing strategy for worker batches (None = PyTorch's default;
            "file_system" where /dev/shm is small).
    """

    def __init__(
        self,
        *,
        batch_size: int = 4,
        num_workers: int = 2,
        batches_per_epoch: int = 1000,
        val_batches: int = 0,
        seed: int = 0,
        shuffle_buffer: int = 64,
        max_skip_rate: float = 0.05,
        skip_rate_min_samples: int = 50,
        pin_memory: bool = True,
        prefetch_factor: int = 2,
        persistent_workers: bool = False,
        sharing_strategy: str | None = None,
    ):
        super().__init__()
        strategies = torch.multiprocessing.get_all_sharing_strategies()
        if sharing_strategy is not None and sharing_strategy not in strategies:
            raise ValueError(f"data.sharing_strategy: expected one of {sorted(strategies)}, got {sharing_strategy!r}")
        self.batch_size, self.num_workers = batch_size, num_workers
        self.batches_per_epoch, self.val_batches = batches_per_epoch, val_batches
        self.seed, self.shuffle_buffer = seed, shuffle_buffer
        self.max_skip_rate, self.skip_rate_min_samples = max_skip_rate, skip_rate_min_samples
        self.pin_memory, self.prefetch_factor, self.persistent_workers = pin_memory, prefetch_factor, persistent_workers
        self.sharing_strategy = sharing_strategy
        self._train: ShardStream | None = None
        self._val: ShardStream | None = None
        self._test: ShardStream | None = None
        self._epoch = 0
        self._resume_step = 0  # global step of the checkpoint this run resumed from (0: a fresh run)

    # ------------------------------------------------------------------ streams

    def _rank(self) -> tuple[int | None, int | None]:
        """(rank, world size) of the trainer; (None, None) without one (the stream then detects them)."""
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        return None, None

    def _stream_options(self) -> dict[str, Any]:
        """The `ShardStream` arguments every stream of this module takes: skip tolerance and the trainer's rank."""
        rank, world = self._rank()
        return {
            "max_skip_rate": self.max_skip_rate,
            "skip_rate_min_samples": self.skip_rate_min_samples,
            "rank": rank,
            "world_size": world,
        }

    def _make_train_stream(self, seed: int) -> ShardStream:
        raise NotImplementedError

    def _make_eval_stream(self, part: Part) -> ShardStream | None:
        """The validation (``part="val"``) or test stream, None when there is none."""
        raise NotImplementedError

    def train_stream(self) -> ShardStream:
        if self._train is None:
            self._train = self._make_train_stream(resume_seed(self.seed, self._resume_step))
            self._train.set_epoch(self._epoch)
        return self._train

    def val_stream(self) -> ShardStream | None:
        if self._val is None:
            self._val = self._make_eval_stream("val")
        return self._val

    def test_stream(self) -> ShardStream | None:
        if self._test is None:
            self._test = self._make_eval_stream("test")
        return self._test

    def _loader(self, stream: ShardStream, persistent: bool) -> DataLoader:
        return make_loader(
            stream, self.num_workers, self.pin_memory, self.prefetch_factor, persistent, self.sharing_strategy
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_stream(), self.persistent_workers)

    def val_dataloader(self) -> DataLoader | list:
        stream = self.val_stream()
        return [] if stream is None else self._loader(stream, False)

    def test_dataloader(self) -> DataLoader | list:
        stream = self.test_stream()
        return [] if stream is None else self._loader(stream, False)

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        epoch = self._train.epoch if self._train is not None else self._epoch
        state = {"next_epoch": int(epoch) + 1}
        trainer = getattr(self, "trainer", None)
        step = int(trainer.global_step) if trainer is not None else self._resume_step
        if step:
            state["global_step"] = step
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._epoch = int(state_dict.get("next_epoch", 0))
        self._resume_step = int(state_dict.get("global_step", 0))
        if self._train is not None:
            self._train.set_epoch(self._epoch)
            self._train.seed = resume_seed(self.seed, self._resume_step)


class ClipDataModule(StreamDataModule):
    """Weighted mixture of clip shard sources, as batches of the `datamodules.batch` contract.

    Args:
        sources: {name: SourceConfig fields} (plain dicts from Hydra; unknown keys fail). Sources with weight 0
            are dropped from training (kept for validation if they have `val_shards`).
        sampling: `ClipSamplingConfig` fields (frames, resolution, augmentation, scale normalisation).
        val_sampling: overrides of `sampling` for validation/test (e.g. another resolution).
        synthetic: {source name: `datamodules.synthetic.SyntheticConfig` fields}: those sources are generated in
            process instead of read from shards (smoke runs without data); validation and test scenes come from
            other seeds than training's and than each other's (`datamodules.holdout.SEED_OFFSET`).
        synthetic_pool, synthetic_val_pool: keep and reuse that many generated clips for training / validation (and
            as many, other ones, for test) (0 = a new scene for every sample); a pool makes epochs cheap and
            validation clips fixed.
        **stream: the `StreamDataModule` settings (batch_size, num_workers, batches_per_epoch, val_batches, seed,
            shuffle_buffer, max_skip_rate, skip_rate_min_samples, pin_memory, prefetch_factor, persistent_workers,
            sharing_strategy).
    """

    def __init__(
        self,
        sources: Mapping[str, Mapping[str, Any]],
        sampling: Mapping[str, Any] | None = None,
        val_sampling: Mapping[str, Any] | None = None,
        synthetic: Mapping[str, Mapping[str, Any]] | None = None,
        synthetic_pool: int = 0,
        synthetic_val_pool: int = 0,
        **stream: Any,
    ):
        super().__init__(**stream)
        self.sources = [source_from_dict(k, dict(v)) for k, v in sources.items()]
        sampling = _plain(sampling or {})
        self.sampling = ClipSamplingConfig(**sampling)
        self.val_sampling = ClipSamplingConfig(**{**sampling, **_plain(val_sampling or {})})
        self.synthetic = {k: dict(v) for k, v in (synthetic or {}).items()}
        self.synthetic_pool, self.synthetic_val_pool = synthetic_pool, synthetic_val_pool

    def _sample_sources(self, split: Literal["train", "val", "test"]) -> dict[str, Any]:
        if not self.synthetic:
            return {}
        from datamodules.synthetic import SyntheticConfig, SyntheticSource

        pool = self.synthetic_pool if split == "train" else self.synthetic_val_pool
        return {
            k: SyntheticSource(SyntheticConfig(**v), seed=self.seed + SEED_OFFSET[split], pool=pool)
            for k, v in self.synthetic.items()
        }

    def _make_train_stream(self, seed: int) -> ClipStream:
        return ClipStream(
            [s for s in self.sources if s.weight > 0],
            self.sampling,
            self.batch_size,
            self.batches_per_epoch,
            train=True,
            seed=seed,
            shuffle_buffer=self.shuffle_buffer,
            sample_sources=self._sample_sources("train"),
            **self._stream_options(),
        )

    def _make_eval_stream(self, part: Part) -> ClipStream | None:
        sources = []
        for s in self.sources:
            if s.name in self.synthetic or expand_shards(s.val_shards):
                sources.append(s)
            elif s.val_shards is not None:
                log.warning("source %s: no validation shards match %r; not validated", s.name, s.val_shards)
        if self.val_batches <= 0 or not sources:
            return None
        for s in sources:
            if s.weight <= 0:
                s.weight = 1.0
        return ClipStream(
            sources,
            self.val_sampling,
            self.batch_size,
            self.val_batches,
            train=False,
            seed=self.seed,
            sample_sources=self._sample_sources(part),
            part=part,
            **self._stream_options(),
        )

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        return finish_batch(batch)


def resume_seed(seed: int, step: int) -> int:
    """The training stream's base seed for a run resumed at global ``step``: ``seed`` itself for a fresh run (step 0),
    else a seed drawn from (seed, step); the stream adds (rank, worker, epoch) to it."""
    if step <= 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(step)]).generate_state(1, np.uint32)[0])


def _plain(d: Mapping[str, Any]) -> dict[str, Any]:
    """A plain dict with lists turned into tuples (OmegaConf ListConfig → tuple for the dataclass fields)."""
    out = {}
    for k, v in dict(d).items():
        out[k] = tuple(v) if not isinstance(v, str | bytes) and hasattr(v, "__iter__") else v
    return out


__all__ = ["ClipDataModule", "ClipSamplingConfig", "SourceConfig", "StreamDataModule"]


def make_loader(
    stream: Any,
    num_workers: int,
    pin_memory: bool,
    prefetch_factor: int | None,
    persistent: bool,
    sharing_strategy: str | None = None,
) -> DataLoader:
    """The DataLoader over an epoch-aware stream that yields whole batches (``batch_size=None``)."""
    kw: dict[str, Any] = {}
    if num_workers > 0:
        if sharing_strategy:
            # "file_system" passes worker batches through files instead of /dev/shm segments: containers often
            # have a small /dev/shm, where large batches kill the workers ("DataLoader worker exited unexpectedly").
            torch.multiprocessing.set_sharing_strategy(sharing_strategy)
        kw = dict(prefetch_factor=prefetch_factor, persistent_workers=persistent)
    return _EpochLoader(
        stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory and torch.cuda.is_available(), **kw
    )
