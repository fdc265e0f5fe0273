"""GPU: the batched per-pixel augmentation (`augment_on="device"`) on CUDA — float32 antialiased resize, torch
gathers and the scene scale — gives the worker path's batch (the CPU reference) up to the resampling arithmetic
(images) and float32 rounding (the fields the scene scale multiplies)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from datamodules.batch import check_batch, collate, finish_batch
from datamodules.spec import encode_clip
from datamodules.stream import ClipSamplingConfig, ClipTransform, SourceConfig
from tests.test_stream import _mixed_clips

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("out_hw", [(32, 32), (8, 16), (256, 256)])
def test_cuda_augmentation_equals_worker_path(out_hw):
    from lightning.fabric.utilities.apply_func import move_data_to_device

    base = ClipSamplingConfig(
        num_input=3,
        num_output=3,
        resolution=max(out_hw),
        size_divisor=8,
        random_aspect=False,
        flip_prob=0.5,
        crop_position="random",
        include_input_prob=0.5,
    )
    src = SourceConfig("pointodyssey", "unused", max_gap=13)
    raw = [{"__key__": c.key, **encode_clip(c)} for c in _mixed_clips()]
    for seed in range(3):
        out = {}
        for mode in ("worker", "device"):
            transform = ClipTransform(replace(base, augment_on=mode), train=True)
            samples = [transform(r, np.random.default_rng([seed, i]), out_hw, src) for i, r in enumerate(raw)]
            out[mode] = collate(samples, 3)
        ref = finish_batch(out["worker"])
        gpu = finish_batch(move_data_to_device(out["device"], torch.device("cuda")))
        assert gpu["images"].device.type == "cuda" and gpu["images"].dtype == torch.float32
        check_batch(move_data_to_device(gpu, torch.device("cpu")))
        for k, v in ref.items():
            g = gpu[k].cpu() if torch.is_tensor(gpu[k]) else gpu[k]
            if k == "images":
                diff = (g - v).abs()
                assert diff.max() <= 1.5 / 255 and diff.mean() <= 0.35 / 255, (diff.max() * 255, diff.mean() * 255)
            elif k in ("c2w", "tracks_world", "depth", "metric_scale"):  # × the scene scale, computed on the GPU
                assert v.dtype == g.dtype and torch.equal(v.isnan(), g.isnan()), k
                torch.testing.assert_close(g, v, rtol=3e-7, atol=1e-7, equal_nan=True, msg=k)
            elif torch.is_tensor(v):
                assert v.dtype == g.dtype and torch.equal(v.nan_to_num(7.0), g.nan_to_num(7.0)), k
            else:
                assert g == v, k
