"""A released distilled Wan2.2-TI2V-5B transformer in the diffusers layout (FastVideo's
FastWan2.2-TI2V-5B-FullAttn-Diffusers) as the base model of generation: its full-size key/shape manifest against the
model built on the meta device, and a tiny transformer saved in the same layout that loads and generates with the
student's few-step schedule."""

from __future__ import annotations

import json
import re
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diff4splat.cli import InputError
from diff4splat.models import fastwan
from diff4splat.models.camera_wan import CameraWanConfig
from diff4splat.models.wan_convert import transformer_config
from diff4splat.pipelines.generation import Diff4SplatPipeline
from diff4splat.pipelines.jobs import GenerateConfig, ModelPaths, TrajectoryOptions, generate, make_job
from diff4splat.sampling import DISTILLED_TIMESTEPS, SamplingConfig
from diff4splat.weights import WeightsError
from tests.test_generate import one_thread  # noqa: F401 (an autouse fixture: one intra-op thread)

TI2V_5B_PARAMETERS = 4_999_787_712
DMD_INDEX = {"_class_name": "WanDMDPipeline", "_diffusers_version": "0.33.0.dev0"}  # the release's model_index.json


def write_header_only_safetensors(path: Path, shapes: dict[str, tuple[int, ...]], dtype: str = "BF16") -> None:
    """A valid safetensors file of these tensors whose data is a hole (a sparse file: no disk space, no memory)."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in shapes.items():
        size = 2 * int(np.prod(shape, dtype=np.int64))
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)


def write_release(root: Path, shapes: dict[str, tuple[int, ...]], shards: int = 3) -> None:
    """A FastWan-layout folder: model_index.json, transformer/config.json, sharded weights and their index."""
    folder = root / "transformer"
    folder.mkdir(parents=True)
    (root / "model_index.json").write_text(json.dumps({**DMD_INDEX, "transformer": ["diffusers", "X"]}))
    config = {"_class_name": "WanTransformer3DModel", **transformer_config("ti2v_5b")}
    (folder / "config.json").write_text(json.dumps(config))
    names = sorted(shapes)
    weight_map = {}
    for i in range(shards):
        file = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = names[i::shards]
        write_header_only_safetensors(folder / file, {k: shapes[k] for k in part})
        weight_map.update(dict.fromkeys(part, file))
    (folder / fastwan.INDEX_NAME).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def test_full_size_release_layout_matches_the_ti2v_5b_transformer_built_on_meta(tmp_path):
    expected = fastwan.expected_shapes(transformer_config("ti2v_5b"))
    assert fastwan.num_parameters(expected) == TI2V_5B_PARAMETERS  # FastWan is a full fine-tune: the same 5.0 B
    assert expected["patch_embedding.weight"] == (3072, 48, 1, 2, 2) and expected["proj_out.weight"] == (192, 3072)
    assert expected["blocks.29.ffn.net.2.weight"] == (3072, 14336) and expected["scale_shift_table"] == (1, 2, 3072)
    root = tmp_path / "FastWan2.2-TI2V-5B-FullAttn-Diffusers"
    write_release(root, expected)
    manifest = fastwan.check_transformer_folder(root)
    assert manifest == expected and fastwan.num_parameters(manifest) == TI2V_5B_PARAMETERS
    # the release's schedule is the one the distilled sampler runs for steps=3
    assert fastwan.release_timesteps(root) == DISTILLED_TIMESTEPS[3] == [1000.0, 757.0, 522.0]
    assert fastwan.release_timesteps(tmp_path) is None  # no model_index.json: not a distilled release

    # a tensor missing, one extra and one of the wrong shape are each named
    broken = dict(expected)
    del broken["blocks.7.attn1.to_q.weight"]
    broken["blocks.3.ffn.net.2.weight"] = (3072, 13824)
    broken["blocks.30.attn1.to_q.weight"] = (3072, 3072)
    bad = tmp_path / "broken"
    write_release(bad, broken)
    with pytest.raises(WeightsError) as e:
        fastwan.check_transformer_folder(bad)
    message = str(e.value)
    assert "missing blocks.7.attn1.to_q.weight" in message and "unexpected blocks.30.attn1.to_q.weight" in message
    assert "mis-shaped blocks.3.ffn.net.2.weight (3072, 13824) (model (3072, 14336))" in message


def test_a_tiny_release_in_the_diffusers_layout_loads_and_generates_with_its_few_step_schedule(tmp_path):
    from safetensors.torch import save_file

    from diff4splat.configs import to_plain

    ref = Diff4SplatPipeline.tiny(seed=5)
    root = tmp_path / "FastWan-tiny-Diffusers"
    ref.text_encoder.encoder.save_pretrained(str(root / "text_encoder"))
    ref.text_encoder.tokenizer.save_pretrained(str(root / "tokenizer"))
    ref.vae.vae.save_pretrained(str(root / "vae"))
    ref.camera_wan.transformer.save_pretrained(str(root / "transformer"), max_shard_size="0.1MB")  # sharded, indexed
    (root / "model_index.json").write_text(json.dumps(DMD_INDEX))
    assert len(fastwan.weight_files(root / "transformer")) > 1
    ref.camera_wan.save_camera_weights(tmp_path / "camera.safetensors")
    state = {k: v.contiguous() for k, v in ref.lrdm.state_dict().items()}
    meta = {"hparams": json.dumps({"model": to_plain(ref.lrdm.config)})}
    save_file(state, str(tmp_path / "lrdm.safetensors"), metadata=meta)

    y, x = np.mgrid[0:96, 0:160]
    Image.fromarray(np.stack([x * 255 // 160, y * 255 // 96, x * 0 + 90], -1).astype(np.uint8)).save(
        tmp_path / "in.png"
    )
    cw = CameraWanConfig(
        init="pretrained", pretrained_path=str(root), camera_weights=str(tmp_path / "camera.safetensors")
    )
    student = SamplingConfig(mode="distilled", steps=3, seed=2)
    cfg = GenerateConfig(
        image=str(tmp_path / "in.png"),
        output_dir=str(tmp_path / "out"),
        progress=False,
        height=96,
        width=160,
        models=ModelPaths(
            text_encoder=str(root), vae=str(root), camera_wan=cw, lrdm=str(tmp_path / "lrdm.safetensors")
        ),
        trajectory=TrajectoryOptions(num_frames=5, strength=0.2),
        sampling=student,
        seed=2,
    )
    # the release refuses a sampler it was not distilled for, before anything is loaded
    with pytest.raises(InputError, match=r"3-step distilled release .*pass sampling\.mode=distilled sampling\.steps=3"):
        generate(replace(cfg, sampling=SamplingConfig(steps=3)))
    assert not (tmp_path / "out").exists()

    out = generate(cfg)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["sampling"]["mode"] == "distilled" and meta["sampling"]["steps"] == 3 and not meta["untrained"]
    # what the student read: its timesteps, and no guidance scale or scheduler it ignores
    assert meta["sampling"]["timesteps"] == [1000.0, 757.0, 522.0]
    assert not {"guidance_scale", "scheduler", "flow_shift"} & set(meta["sampling"])
    # the loaded release gives the reference models' latents with the same schedule
    loaded = Diff4SplatPipeline.from_config(cfg)
    job = make_job(cfg, tmp_path / "in.png", cfg.camera, "", 2, tmp_path / "unused")
    args = (job.image, job.cameras.c2w.float(), job.cameras.fxfycxcy.float(), job.cameras.times.float(), "")
    a, b = (p(*args, sampling=student) for p in (ref, loaded))
    torch.testing.assert_close(b.latents, a.latents)
    assert not torch.allclose(a.latents, ref(*args, sampling=replace(student, steps=4)).latents)  # schedule matters

    # a release whose transformer lacks a tensor is refused naming it (strict, like every release)
    shard = fastwan.weight_files(root / "transformer")[0]
    from safetensors.torch import load_file

    tensors = load_file(str(shard))
    dropped = sorted(tensors)[0]
    save_file({k: v for k, v in tensors.items() if k != dropped}, str(shard))
    with pytest.raises(WeightsError, match="missing " + re.escape(dropped)):
        Diff4SplatPipeline.from_config(cfg)
