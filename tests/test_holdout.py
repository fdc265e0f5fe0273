"""Validation and test read disjoint held-out data in every DataModule (`datamodules.holdout`): the checkpoint that
validation selects is tested on clips it was not selected on."""

from __future__ import annotations

import pytest
import torch
from test_stream import write_shards

from datamodules.datamodule import ClipDataModule
from datamodules.holdout import part_of
from datamodules.scene import SceneDataModule
from datamodules.video import SyntheticVideoDataModule

SAMPLING = {"num_input": 2, "num_output": 2, "resolution": 16, "size_divisor": 8, "random_aspect": False}
SMALL_SCENE = {"height": 16, "width": 16, "ground_grid": 6, "wall_grid": 4, "num_blobs": 1, "num_rigid": 0}


def _keys(loader) -> list[str]:
    return [k for batch in loader for k in batch["key"]]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_shard_validation_and_test_split_the_held_out_clips_by_key(tmp_path, num_workers):
    write_shards(tmp_path, "pointodyssey", num_shards=4, per_shard=6)
    dm = ClipDataModule(
        {"pointodyssey": {"shards": str(tmp_path / "train-*.tar"), "val_shards": str(tmp_path / "train-*.tar")}},
        sampling=SAMPLING,
        batch_size=2,
        num_workers=num_workers,
        val_batches=4,
    )
    val, test = _keys(dm.val_dataloader()), _keys(dm.test_dataloader())
    assert len(val) == len(test) == 8
    assert not set(val) & set(test)
    assert {part_of(k.split("/", 1)[1]) for k in val} == {"val"} and {part_of(k.split("/", 1)[1]) for k in test} == {
        "test"
    }
    assert _keys(dm.val_dataloader()) == val and _keys(dm.test_dataloader()) == test  # fixed sets
    # the 24 clips split into two halves of about equal size
    halves = [part_of(f"pointodyssey{i:04d}") for i in range(24)]
    assert 6 <= halves.count("val") <= 18


def test_in_process_validation_and_test_scenes_come_from_other_seeds():
    synthetic = {"num_frames": 5, "height": 16, "width": 16, **SMALL_SCENE}
    dm = ClipDataModule(
        {"synthetic": {"shards": [], "max_gap": 5}},
        synthetic={"synthetic": synthetic},
        synthetic_pool=4,
        synthetic_val_pool=4,
        sampling=SAMPLING,
        batch_size=2,
        num_workers=0,
        batches_per_epoch=4,
        val_batches=2,
    )
    train, val, test = _keys(dm.train_dataloader()), _keys(dm.val_dataloader()), _keys(dm.test_dataloader())
    assert len(val) == len(test) == 4
    assert not set(val) & set(test) and not set(train) & (set(val) | set(test))
    assert _keys(dm.test_dataloader()) == test


def test_video_test_pool_is_disjoint_from_validation_in_both_holdout_modes():
    synthetic = {"num_frames": 5, "dynamic": False, **SMALL_SCENE}
    scenes = SyntheticVideoDataModule(synthetic=synthetic, pool=2, val_pool=2, batch_size=2, val_batches=1)
    scenes.setup("fit")
    scenes.setup("test")
    val, test = _keys(scenes.val_dataloader()), _keys(scenes.test_dataloader())
    assert len(val) == len(test) == 2 and not set(val) & set(test)
    assert not {k.split("-")[1] for k in val} & {k.split("-")[1] for k in test}  # other scenes
    # paths: the training scenes along presets that neither training nor validation uses
    paths = SyntheticVideoDataModule(
        synthetic=synthetic, pool=4, val_pool=4, trajectories_per_scene=2, holdout="paths", batch_size=4
    )
    paths.setup("fit")
    paths.setup("test")
    train = {s["key"] for s in paths._train.samples}
    val, test = set(_keys(paths.val_dataloader())), set(_keys(paths.test_dataloader()))
    assert len(val) == len(test) == 4 and not (train & val) and not (train & test) and not (val & test)
    scenes_of = [s["key"].split("-")[1] for s in paths._test.samples]
    assert sorted(scenes_of) == sorted(2 * [s["key"].split("-")[1] for s in paths._train.samples[::2]])
    # the test set needs a preset left after validation's
    with pytest.raises(ValueError, match="at most 12"):
        SyntheticVideoDataModule(synthetic=synthetic, pool=4, val_pool=22, trajectories_per_scene=2, holdout="paths")


def test_scene_fit_validates_and_tests_on_alternate_held_out_frames():
    dm = SceneDataModule(num_frames=13, height=16, width=16, holdout_every=4)
    dm.setup()
    assert (dm.val_indices, dm.test_indices) == ([1, 9], [5])
    assert not set(dm.train_indices) & {1, 5, 9}
    val, test = next(iter(dm.val_dataloader())), next(iter(dm.test_dataloader()))
    assert val["time_index"].tolist() == [[1, 9]] and test["time_index"].tolist() == [[5]]
    assert not torch.equal(val["images"][0, 0], test["images"][0, 0])
    with pytest.raises(ValueError, match="holds out frame"):
        SceneDataModule(num_frames=5, height=16, width=16, holdout_every=4).setup()
