"""Validation and test: two disjoint halves of the held-out data.

Training selects its checkpoint on validation (`optimized_metric`) and `train.py` then tests that checkpoint, so a
test on the validation clips would report the number the checkpoint was picked for. Every DataModule therefore tests
on held-out data that validation never sees:

- clips and latents read from shards (the held-out split, ``val_shards``): each clip belongs to validation or to test
  by a hash of its key (`part_of`), whatever the shard layout, the (rank, worker) split and the order;
- clips generated in process (`datamodules.synthetic`, `datamodules.video`): scenes of other seeds (`SEED_OFFSET`);
- one scene's held-out views (`datamodules.scene`): alternate held-out frames.
"""

from __future__ import annotations

import zlib
from typing import Literal

Part = Literal["val", "test"]
PARTS: tuple[Part, ...] = ("val", "test")

# added to a DataModule's seed for the in-process scenes of each split (training uses the seed itself)
SEED_OFFSET = {"train": 0, "val": 10_000, "test": 20_000}


def part_of(key: str) -> Part:
    """The half of the held-out data that the sample ``key`` belongs to (CRC-32: stable across processes and runs)."""
    return "val" if zlib.crc32(key.encode()) % 2 == 0 else "test"


def check_part(part: str) -> Part:
    if part not in PARTS:
        raise ValueError(f"held-out part must be one of {PARTS}, got {part!r}")
    return part  # type: ignore[return-value]
