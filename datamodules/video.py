"""`SyntheticVideoDataModule`: procedural videos with exact cameras for camera-controlled diffusion without data.

Each sample is one procedural scene (``datamodules.synthetic``) filmed along one of its random trajectories: all
``num_frames`` frames in time order (F = 1 + 4k, the Wan VAE's frame count), as the diffusion batch contract wants
(see ``diff4splat.systems.diffusion``): ``frames`` [F, 3, H, W] float in [0, 1], ``c2w`` [F, 4, 4] OpenCV c2w with
the first camera = identity in scene units (the camera model's pose scale, as ``encode_latents --pose-scale scene``:
the mean distance from it of the depth points of `SCENE_FRAMES` evenly spaced frames is 1; `diff4splat.geometry.scale`),
``fxfycxcy`` [F, 4], ``key``. The system encodes ``frames`` online with its Wan
VAE. Scenes are generated once into a pool (training) and disjoint held-out pools of other seeds (validation, and
test: the checkpoint chosen on validation is tested on clips it was not chosen on; `datamodules.holdout`);
training draws ``batches_per_epoch`` batches from the pool with a seeded sampler. ``trajectories_per_scene`` > 1
films each scene along that many different camera paths (identical first frames: only the cameras tell the clips
apart, which is what camera control must learn); ``trajectory_strength`` fixes the paths' strength (default: the
seed's random one in [0.3, 1]).

``holdout`` chooses what validation holds out: ``scenes`` (other seeds, filmed like the training scenes) or
``paths``: the training scenes themselves, each filmed along ``val_pool / scenes`` camera presets that none of its
training clips uses (a scene's presets are a seeded permutation of ``datamodules.synthetic.TRAJECTORIES``: the first
``trajectories_per_scene`` train, the next ``val_pool / scenes`` validate, and up to as many of the rest test).
Held-out paths measure whether a model reads the cameras rather than memorising clips: same first frame, new camera
motion.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler

from datamodules.datamodule import resume_seed
from datamodules.scene_unit import scene_frames, scene_unit
from datamodules.synthetic import TRAJECTORIES, SyntheticConfig, generate_arrays

VAL_SEED_OFFSET = 1_000_003
TEST_SEED_OFFSET = 2 * VAL_SEED_OFFSET


def video_sample(
    cfg: SyntheticConfig, seed: int, trajectory: str | None = None, strength: float | None = None
) -> dict[str, Any]:
    a = generate_arrays(cfg, seed, trajectory=trajectory, strength=strength)
    c2w = torch.from_numpy(a["c2w"]).double()
    c2w = torch.linalg.inv(c2w[:1]) @ c2w  # canonical: first camera = identity
    sel = scene_frames(len(c2w))
    s, _ = scene_unit(c2w[sel].numpy(), a["fxfycxcy"][sel], a["depth"][sel], a["depth_valid"][sel])
    c2w[:, :3, 3] *= s  # scene units
    return {
        "frames": torch.from_numpy(a["frames"]).permute(0, 3, 1, 2).contiguous(),  # uint8 [F, 3, H, W]
        "c2w": c2w.float(),
        "fxfycxcy": torch.from_numpy(a["fxfycxcy"]).float(),
        "key": f"synthetic-{seed:08d}-{a['trajectory']}",
    }


def scene_presets(seed: int) -> list[str]:
    """The camera presets a scene is filmed along, in order: a seeded permutation of ``TRAJECTORIES``."""
    return [TRAJECTORIES[i] for i in np.random.default_rng([seed, 77]).permutation(len(TRAJECTORIES))]


class _Pool(Dataset):
    """Clips of ``scenes`` filmed along their presets ``first .. first + per_scene - 1`` (scene-major order); with
    ``per_scene`` 1 and ``first`` None, each scene along its seed's own random path."""

    def __init__(
        self,
        cfg: SyntheticConfig,
        seeds: list[int],
        per_scene: int = 1,
        strength: float | None = None,
        first: int | None = None,
    ) -> None:
        if per_scene == 1 and first is None:
            self.samples = [video_sample(cfg, s, strength=strength) for s in seeds]
            return
        first = first or 0
        self.samples = [
            video_sample(cfg, s, name, strength) for s in seeds for name in scene_presets(s)[first : first + per_scene]
        ]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.samples[i]


def collate_videos(samples: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "frames": torch.stack([s["frames"] for s in samples]),
        "c2w": torch.stack([s["c2w"] for s in samples]),
        "fxfycxcy": torch.stack([s["fxfycxcy"] for s in samples]),
        "key": [s["key"] for s in samples],
    }


class _RankOffset(Sampler):
    """The same random draws on every rank, shifted by ``rank × ⌊n / world⌋`` (mod n): at every step the ranks train
    on different clips (when the pool has at least as many clips as ranks), with one shared seed."""

    def __init__(self, base: Sampler, n: int, rank: int, world: int) -> None:
        self.base, self.n = base, n
        self.offset = rank * max(1, n // world)

    def __iter__(self):
        return ((int(i) + self.offset) % self.n for i in self.base)

    def __len__(self) -> int:
        return len(self.base)


class SyntheticVideoDataModule(L.LightningDataModule):
    def __init__(
        self,
        synthetic: dict[str, Any] | None = None,
        pool: int = 64,
        val_pool: int = 8,
        batch_size: int = 4,
        batches_per_epoch: int = 100,
        val_batches: int = 2,
        seed: int = 0,
        num_workers: int = 0,
        trajectories_per_scene: int = 1,
        trajectory_strength: float | None = None,
        holdout: Literal["scenes", "paths"] = "scenes",
    ) -> None:
        super().__init__()
        self.cfg = SyntheticConfig(**{"num_frames": 9, "height": 64, "width": 64, **dict(synthetic or {})})
        if (self.cfg.num_frames - 1) % 4:
            raise ValueError(f"data.synthetic.num_frames must be 1 + 4k (Wan VAE), got {self.cfg.num_frames}")
        if pool < 1 or val_pool < 0:
            raise ValueError(f"data.pool must be >= 1 and data.val_pool >= 0, got {pool}, {val_pool}")
        if not 1 <= trajectories_per_scene <= len(TRAJECTORIES):
            raise ValueError(
                f"data.trajectories_per_scene must be in [1, {len(TRAJECTORIES)}], got {trajectories_per_scene}"
            )
        if holdout not in ("scenes", "paths"):
            raise ValueError(f"data.holdout must be 'scenes' or 'paths', got {holdout!r}")
        if pool % trajectories_per_scene or (holdout == "scenes" and val_pool % trajectories_per_scene):
            raise ValueError(
                f"data.pool ({pool}) and data.val_pool ({val_pool}) must be multiples of "
                f"data.trajectories_per_scene ({trajectories_per_scene})"
            )
        scenes = pool // trajectories_per_scene
        if holdout == "paths":
            # validation's presets, then at least one left for the test set
            if val_pool % scenes or trajectories_per_scene + val_pool // scenes > len(TRAJECTORIES) - 1:
                raise ValueError(
                    f"data.holdout=paths films each of the {scenes} training scenes along data.val_pool / {scenes} "
                    f"presets unused in training (and the test set along presets left after those): data.val_pool "
                    f"({val_pool}) must be a multiple of {scenes} and data.trajectories_per_scene + data.val_pool / "
                    f"{scenes} at most {len(TRAJECTORIES) - 1}"
                )
        self.per_scene, self.strength, self.holdout = trajectories_per_scene, trajectory_strength, holdout
        self.pool, self.val_pool = pool, val_pool
        self.batch_size, self.batches_per_epoch, self.val_batches = batch_size, batches_per_epoch, val_batches
        self.seed, self.num_workers = seed, num_workers
        self.save_hyperparameters(
            {
                "synthetic": asdict(self.cfg),
                "pool": pool,
                "val_pool": val_pool,
                "trajectories_per_scene": trajectories_per_scene,
                "trajectory_strength": trajectory_strength,
                "holdout": holdout,
            }
        )
        self._train: _Pool | None = None
        self._val: _Pool | None = None
        self._test: _Pool | None = None
        self._resume_step = 0  # global step of the checkpoint this run resumed from (0: a fresh run)

    def setup(self, stage: str | None = None) -> None:
        scenes = self.pool // self.per_scene
        train_seeds = [self.seed * 100_000 + i for i in range(scenes)]
        paths = self.holdout == "paths"
        if self._train is None and stage in (None, "fit"):
            self._train = _Pool(self.cfg, train_seeds, self.per_scene, self.strength, 0 if paths else None)
        if self._val is None and self.val_pool and stage in (None, "fit", "validate"):
            if paths:
                self._val = _Pool(self.cfg, train_seeds, self.val_pool // scenes, self.strength, self.per_scene)
            else:
                seeds = [VAL_SEED_OFFSET + self.seed * 100_000 + i for i in range(self.val_pool // self.per_scene)]
                self._val = _Pool(self.cfg, seeds, self.per_scene, self.strength)
        if self._test is None and self.val_pool and stage in (None, "test"):
            if paths:  # the presets after validation's, as many as validation has or as are left
                first = self.per_scene + self.val_pool // scenes
                count = min(self.val_pool // scenes, len(TRAJECTORIES) - first)
                self._test = _Pool(self.cfg, train_seeds, count, self.strength, first)
            else:
                seeds = [TEST_SEED_OFFSET + self.seed * 100_000 + i for i in range(self.val_pool // self.per_scene)]
                self._test = _Pool(self.cfg, seeds, self.per_scene, self.strength)

    def train_seed(self) -> int:
        """The training sampler's seed: ``seed`` for a fresh run, else drawn from (seed, resume step), so a resumed
        run does not replay the clips of its first steps. (Ranks share it and differ by an offset: `_RankOffset`.)"""
        return resume_seed(self.seed, self._resume_step)

    def state_dict(self) -> dict[str, Any]:
        trainer = getattr(self, "trainer", None)
        return {"global_step": int(trainer.global_step) if trainer is not None else self._resume_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume_step = int(state_dict.get("global_step", 0))

    def train_dataloader(self) -> DataLoader:
        gen = torch.Generator().manual_seed(self.train_seed())
        sampler = RandomSampler(
            self._train, replacement=True, num_samples=self.batches_per_epoch * self.batch_size, generator=gen
        )
        trainer = getattr(self, "trainer", None)
        if trainer is not None and int(getattr(trainer, "world_size", 1)) > 1:
            sampler = _RankOffset(sampler, len(self._train), int(trainer.global_rank), int(trainer.world_size))
        return DataLoader(
            self._train,
            batch_size=self.batch_size,
            sampler=sampler,
            collate_fn=collate_videos,
            num_workers=self.num_workers,
            drop_last=True,
        )

    def _eval_loader(self, pool: _Pool | None) -> DataLoader | list:
        if pool is None or not self.val_batches:
            return []
        n = min(len(pool), self.val_batches * self.batch_size)
        subset = torch.utils.data.Subset(pool, list(range(n)))
        return DataLoader(
            subset, batch_size=self.batch_size, shuffle=False, collate_fn=collate_videos, num_workers=self.num_workers
        )

    def val_dataloader(self) -> DataLoader | list:
        return self._eval_loader(self._val)

    def test_dataloader(self) -> DataLoader | list:
        return self._eval_loader(self._test)

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        if batch["frames"].dtype == torch.uint8:
            batch["frames"] = batch["frames"].float() / 255.0
        return batch
