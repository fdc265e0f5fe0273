"""One scene for per-scene fitting: a clip's views split into training views and held-out views.

The clip comes from a shard (``source=path/to/shard.tar``, optionally ``key=``) or is generated in-process by the
synthetic scene generator (``source=synthetic``). Every ``holdout_every``-th frame (starting at frame 1) is held
out: the first, third, ... of them for validation, the second, fourth, ... for test (the fit chosen on validation is
tested on other views); training batches are ``views_per_step`` random training views. Batches carry one scene:
``images`` [1, V, 3, H, W] in [0, 1], ``c2w`` [1, V, 4, 4] (first camera = identity), ``fxfycxcy`` [1, V, 4],
``timestamps`` [1, V] in [0, 1] and ``time_index`` [1, V] (the frame index, i.e. the row of a per-frame deformation
table). ``init_points()`` unprojects the training views' depth (when the clip has it) to seed the Gaussians.
"""

from __future__ import annotations

import logging
import tarfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from datamodules.holdout import Part
from datamodules.spec import Clip, decode_frames, decode_sample
from diff4splat.geometry.cameras import canonicalize, unproject_depth

log = logging.getLogger(__name__)


def read_clip_from_tar(path: str | Path, key: str | None = None) -> Clip:
    """The clip ``key`` (the first one when None) of a WebDataset tar shard."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"scene source: no shard file at {path}")
    samples: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    with tarfile.open(path) as tar:
        for member in tar:
            if not member.isfile():
                continue
            name = Path(member.name).name
            k, _, suffix = name.partition(".")
            if k not in samples:
                if samples and key is None:
                    break  # the first sample is complete
                samples[k] = {"__key__": k}
                order.append(k)
            fobj = tar.extractfile(member)
            samples[k][suffix] = fobj.read() if fobj else b""
    wanted = key if key is not None else (order[0] if order else None)
    if wanted is None or wanted not in samples:
        raise KeyError(f"scene source {path}: no sample with key {key!r} (found {order[:5]}...)")
    return decode_sample(samples[wanted])


class _ViewSampler(IterableDataset):
    def __init__(self, dm: SceneDataModule, steps: int, seed: int) -> None:
        self.dm, self.steps, self.seed = dm, steps, seed
        self.epoch = 0

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + 1000003 * self.epoch)
        self.epoch += 1
        train = torch.as_tensor(self.dm.train_indices)
        for _ in range(self.steps):
            pick = train[torch.randperm(len(train), generator=g)[: self.dm.views_per_step]]
            yield self.dm.views(pick.tolist())


class SceneDataModule(L.LightningDataModule):
    def __init__(
        self,
        source: str = "synthetic",
        key: str | None = None,
        num_frames: int = 13,
        height: int = 64,
        width: int = 64,
        dynamic: bool = True,
        synthetic_seed: int = 0,
        holdout_every: int = 4,
        views_per_step: int = 4,
        steps_per_epoch: int = 100,
        init_points_max: int = 200_000,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if holdout_every < 2:
            raise ValueError(f"data.holdout_every must be >= 2 (1 would hold out every frame), got {holdout_every}")
        self.source, self.key = source, key
        self.num_frames, self.height, self.width = num_frames, height, width
        self.dynamic, self.synthetic_seed = dynamic, synthetic_seed
        self.holdout_every, self.views_per_step = holdout_every, views_per_step
        self.steps_per_epoch, self.init_points_max = steps_per_epoch, init_points_max
        self.num_workers, self.seed = num_workers, seed
        self.clip: Clip | None = None

    # --- loading -------------------------------------------------------------------------------------------------
    def load_clip(self) -> Clip:
        if self.source == "synthetic":
            from datamodules.synthetic import SyntheticConfig, generate_clip

            cfg = SyntheticConfig(
                num_frames=self.num_frames, height=self.height, width=self.width, dynamic=self.dynamic
            )
            return generate_clip(cfg, seed=self.synthetic_seed)
        return read_clip_from_tar(self.source, self.key)

    def setup(self, stage: str | None = None) -> None:
        if self.clip is not None:
            return
        clip = self.load_clip()
        if clip.num_frames != self.num_frames:
            raise ValueError(
                f"scene source {self.source!r}: clip {clip.key!r} has {clip.num_frames} frames but "
                f"data.num_frames={self.num_frames} (the model's deformation table is sized from it)"
            )
        self.clip = clip
        frames = torch.from_numpy(decode_frames(clip)).permute(0, 3, 1, 2).float() / 255.0  # [F, 3, H, W]
        self.images = frames
        c2w = canonicalize(torch.as_tensor(clip.c2w, dtype=torch.float32))
        self.c2w = c2w
        self.fxfycxcy = torch.as_tensor(clip.fxfycxcy, dtype=torch.float32)
        t = torch.as_tensor(clip.timestamps, dtype=torch.float64)
        self.timestamps = ((t - t.min()) / (t.max() - t.min()).clamp_min(1e-12)).float()
        self.depth = torch.as_tensor(clip.depth, dtype=torch.float32) if clip.depth is not None else None
        self.depth_valid = torch.as_tensor(clip.depth_valid) if clip.depth_valid is not None else None
        f = clip.num_frames
        held_out = list(range(1, f, self.holdout_every))
        if len(held_out) < 2:
            raise ValueError(
                f"data.num_frames={f} with data.holdout_every={self.holdout_every} holds out frame(s) {held_out}: "
                "validation and test need one held-out frame each (more frames or a smaller holdout_every)"
            )
        self.val_indices, self.test_indices = held_out[0::2], held_out[1::2]
        self.train_indices = [i for i in range(f) if i not in held_out]
        log.info(
            "scene %s: %d training views, %d validation views, %d test views",
            clip.key,
            len(self.train_indices),
            len(self.val_indices),
            len(self.test_indices),
        )

    def views(self, indices: list[int]) -> dict[str, Any]:
        idx = torch.as_tensor(indices)
        return {
            "images": self.images[idx][None],
            "c2w": self.c2w[idx][None],
            "fxfycxcy": self.fxfycxcy[idx][None],
            "timestamps": self.timestamps[idx][None],
            "time_index": idx[None],
            "key": [self.clip.key if self.clip else "?"],
        }

    @torch.no_grad()
    def init_points(self) -> tuple[Tensor, Tensor] | None:
        """Points [M, 3] and colours [M, 3] unprojected from the training views' depth (None without depth)."""
        self.setup()
        if self.depth is None:
            return None
        idx = torch.as_tensor(self.train_indices)
        depth = self.depth[idx]
        valid = torch.isfinite(depth) & (depth > 0)
        if self.depth_valid is not None:
            valid &= self.depth_valid[idx].bool()
        # canonicalised cameras: depth is unchanged by a rigid change of world frame
        pts = unproject_depth(depth, self.c2w[idx], self.fxfycxcy[idx])  # [V, H, W, 3]
        cols = self.images[idx].permute(0, 2, 3, 1)  # [V, H, W, 3]
        pts, cols = pts[valid], cols[valid]
        if pts.shape[0] > self.init_points_max:
            keep = torch.randperm(pts.shape[0], generator=torch.Generator().manual_seed(self.seed))
            keep = keep[: self.init_points_max]
            pts, cols = pts[keep], cols[keep]
        return pts, cols

    # --- loaders -------------------------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(
            _ViewSampler(self, self.steps_per_epoch, self.seed), batch_size=None, num_workers=self.num_workers
        )

    def _eval_loader(self, part: Part) -> DataLoader:
        self.setup()
        indices = self.val_indices if part == "val" else self.test_indices
        return DataLoader([self.views(indices)], batch_size=None, num_workers=0)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
