"""The DataModule's worker-batch sharing strategy: validated, and batches arrive through files with workers."""

from __future__ import annotations

import pytest
import torch

from datamodules.batch import to_float_images
from datamodules.datamodule import ClipDataModule


def test_bad_sharing_strategy_names_the_field():
    with pytest.raises(
        ValueError, match=r"data.sharing_strategy: expected one of \['file_descriptor', 'file_system'\]"
    ):
        ClipDataModule(sources={}, sharing_strategy="shm")


def test_file_system_strategy_delivers_batches_from_a_worker():
    before = torch.multiprocessing.get_sharing_strategy()
    dm = ClipDataModule(
        sources={"synthetic": {"shards": [], "max_gap": 5}},
        synthetic={"synthetic": {"num_frames": 5, "height": 16, "width": 16}},
        sampling={"num_input": 2, "num_output": 2, "resolution": 16, "size_divisor": 8, "random_aspect": False},
        batch_size=2,
        num_workers=1,
        batches_per_epoch=2,
        val_batches=0,
        pin_memory=False,
        sharing_strategy="file_system",
        synthetic_pool=2,
    )
    try:
        batches = [to_float_images(b) for b in dm.train_dataloader()]
        assert torch.multiprocessing.get_sharing_strategy() == "file_system"
    finally:
        torch.multiprocessing.set_sharing_strategy(before)
    assert len(batches) == 2
    assert batches[0]["images"].shape == (2, 4, 3, 16, 16)
    assert 0.0 <= float(batches[0]["images"].min()) and float(batches[0]["images"].max()) <= 1.0
