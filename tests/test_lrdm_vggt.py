"""The LRDM's ``vggt`` encoder (MoVieS's VGGSplaT behind the LRDM interface): its Gaussians at every query time are
MoVieS's (parity with the raw model and the reference fixtures, renders included), the state dict is
``movies_ckpt.safetensors``'s, released checkpoints load strictly from local paths, and the configs round-trip."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from diff4splat.configs import to_dataclass, to_plain
from diff4splat.gaussians import DeformableGaussians, Gaussians
from diff4splat.models.lrdm import LRDM, LRDMConfig, gaussians_at_all_times
from diff4splat.models.movies import VGGSplatConfig, activate_gaussians, pose_decoding, pose_encoding
from diff4splat.models.released import init_from_released, load_released, lrdm_from_released, released_kind
from diff4splat.models.vggt import dpt_layers
from diff4splat.rendering import render
from diff4splat.weights import WeightsError

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "vggt"
MOVIES_WEIGHTS = FIXTURES / "movies_small_weights.safetensors"
VGGT_WEIGHTS = FIXTURES / "vggt_small_weights.safetensors"
TINY_YAML = ROOT / "conf" / "model" / "lrdm_vggt_tiny.yaml"


def read_io(name: str) -> tuple[dict[str, torch.Tensor], dict]:
    with safe_open(str(FIXTURES / name), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
        meta = f.metadata()
    return tensors, json.loads(meta["config"])


def tiny_config(**fields) -> LRDMConfig:
    """conf/model/lrdm_vggt_tiny.yaml (the tiny configuration every vggt test and the smoke runs use)."""
    return to_dataclass(LRDMConfig, {**OmegaConf.to_container(OmegaConf.load(TINY_YAML)), **fields}, "tiny")


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fixture_lrdm() -> tuple[LRDM, dict[str, torch.Tensor], dict]:
    io, config = read_io("movies_small_io.safetensors")
    model = lrdm_from_released(load_file(MOVIES_WEIGHTS), "fixture", encoder_num_heads=config["encoder_num_heads"])
    return model.eval(), io, config


def flat(x: torch.Tensor) -> torch.Tensor:  # [B, Q, F, C, H, W] -> [B, Q, F·H·W, C]
    return x.permute(0, 1, 2, 4, 5, 3).reshape(x.shape[0], x.shape[1], -1, x.shape[3])


@torch.no_grad()
def test_gaussians_at_every_query_time_are_movies(one_thread):
    """Means, rotations, scales, opacities and colours at each query time equal MoVieS's activated outputs (the raw
    model's, and the reference's in the fixture), and so do the renders of 8 views."""
    model, io, config = fixture_lrdm()
    args = (io["C2W"], io["fxfycxcy"], io["input_timesteps"], io["output_timesteps"])
    out = model(*args, images=io["images"])
    raw = model.backbone(io["images"], *args)
    ours = gaussians_at_all_times(out.gaussians)  # [B, Q, N]
    theirs = activate_gaussians(raw, io["C2W"], io["fxfycxcy"])
    torch.testing.assert_close(ours.means, flat(theirs["means"]), rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.quats, flat(theirs["quats"]), rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.scales, flat(theirs["scales"]), rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(ours.opacities, flat(theirs["opacities"])[..., 0], rtol=0, atol=0)
    torch.testing.assert_close(ours.colors, flat(theirs["colors"]), rtol=0, atol=0)
    names = {"means": "xyz", "colors": "color", "scales": "scale", "quats": "rotation", "opacities": "opacity"}
    for q in range(config["query_times"]):
        at_q = out.gaussians.at(float(io["output_timesteps"][0, q]))
        for ours_name, ref in names.items():
            ref_q = io[f"render.{q}.{ref}"].permute(0, 1, 3, 4, 2).reshape(1, -1, io[f"render.{q}.{ref}"].shape[2])
            value = getattr(at_q, ours_name)
            err = ((value.reshape(ref_q.shape) - ref_q).abs() / ref_q.abs().clamp(min=1.0)).max().item()
            assert err <= 1e-5, (q, ours_name, err)
    # depth for the depth loss: MoVieS's clamped depth of the input frames
    torch.testing.assert_close(out.depth, raw["depth"][:, :, 0].clamp(0.001, 100))
    assert out.grid == (3, 28, 42) and out.gaussians.num_gaussians == 3 * 28 * 42
    # renders: 8 views (4 cameras x the 2 query times) from our Gaussians and from MoVieS's activations
    h, w = io["images"].shape[-2:]
    views = torch.arange(8) % 3
    c2w, fx = io["C2W"][:, views].reshape(1, 2, 4, 4, 4), io["fxfycxcy"][:, views].reshape(1, 2, 4, 4)
    mine = render(ours, c2w, fx, h, w, backend="torch").rgb
    ref = Gaussians(
        flat(theirs["means"]),
        flat(theirs["quats"]),
        flat(theirs["scales"]),
        flat(theirs["opacities"])[..., 0],
        flat(theirs["colors"]),
    )
    expected = render(ref, c2w, fx, h, w, backend="torch").rgb
    assert (mine - expected).abs().max() < 1e-5


@torch.no_grad()
def test_dropping_time_varying_colour_and_opacity_changes_the_renders():
    """Why DeformableGaussians carries opacities_t / colors_t: without them (deltas of position, rotation and scale
    only, opacity and colour static) the fixture's renders at the query times differ from MoVieS's."""
    model, io, _ = fixture_lrdm()
    out = model(io["C2W"], io["fxfycxcy"], io["input_timesteps"], io["output_timesteps"], images=io["images"])
    dg = out.gaussians
    assert dg.time_varying_appearance
    moving = (dg.delta_means.norm(dim=-1) >= 0.005).float().mean().item()
    assert 0.2 < moving < 0.8  # half of the fixture's pixels move: those get re-predicted opacity and colour
    approx = DeformableGaussians(dg.canonical, dg.times, dg.delta_means, dg.delta_quats, dg.delta_log_scales)
    h, w = io["images"].shape[-2:]
    c2w, fx = io["C2W"][:, :2, None], io["fxfycxcy"][:, :2, None]  # camera k at query time k
    full = render(gaussians_at_all_times(dg), c2w, fx, h, w, backend="torch").rgb
    static = render(gaussians_at_all_times(approx), c2w, fx, h, w, backend="torch").rgb
    psnr = -10 * torch.log10((full - static).square().mean())
    assert psnr < 30, float(psnr)  # a visible difference (20.8 dB on the fixture), not rounding


def test_state_dict_is_the_movies_checkpoint_layout():
    """The LRDM's keys are movies_ckpt.safetensors's (``backbone.`` + VGGSplaT's names), with or without activation
    checkpointing, so exports and the released file are interchangeable."""
    model, _, _ = fixture_lrdm()
    assert sorted(model.state_dict()) == sorted(load_file(MOVIES_WEIGHTS))
    wrapped = LRDM(dataclasses_replace(model.config, gradient_checkpointing=True))
    assert sorted(wrapped.state_dict()) == sorted(model.state_dict())
    wrapped.load_state_dict(model.state_dict())
    assert len(wrapped.transformer_blocks()) == 2 + 4 + 4
    assert all(type(b).__name__ == "Block" for b in wrapped.transformer_blocks())


def dataclasses_replace(cfg: LRDMConfig, **fields) -> LRDMConfig:
    import dataclasses

    return dataclasses.replace(cfg, **fields)


def test_checkpointed_blocks_give_the_same_gradients():
    torch.manual_seed(0)
    plain = LRDM(tiny_config())
    ckpt = LRDM(tiny_config(gradient_checkpointing=True))
    ckpt.load_state_dict(plain.state_dict())
    images = torch.rand(1, 2, 3, 28, 28)
    c2w = torch.eye(4).repeat(1, 2, 1, 1)
    fx = torch.tensor([1.0, 1.0, 0.5, 0.5]).repeat(1, 2, 1)
    t, q = torch.tensor([[0.0, 1.0]]), torch.tensor([[0.5]])
    grads = []
    for m in (plain, ckpt):
        m.train()
        out = m(c2w, fx, t, q, images=images)
        (out.gaussians.delta_means.square().mean() + out.depth.mean()).backward()
        grads.append(m.backbone.backbone.frame_blocks[0].state_dict(keep_vars=True)["attn.qkv.weight"].grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_config_round_trips_and_follows_dynamic():
    cfg = tiny_config()
    again = to_dataclass(LRDMConfig, json.loads(json.dumps(to_plain(cfg))), "json")
    assert again == cfg
    static = tiny_config(dynamic=False)
    assert static.vggt.motion_head is None and static.vggt.aggregator.time_dim == 0
    assert static.vggt.encoder == cfg.vggt.encoder and static.vggt.depth_head == cfg.vggt.depth_head
    model = LRDM(static)
    assert not model.dynamic and not hasattr(model.backbone.backbone, "time_embed")
    full = to_dataclass(LRDMConfig, OmegaConf.load(ROOT / "conf" / "model" / "lrdm_vggt_1b.yaml"), "1b")
    assert full.vggt == VGGSplatConfig()  # VGGT-1B sizes = the released dynamic model
    with pytest.raises(ValueError, match="unknown key"):
        tiny_config(vggt={"encoder": {"embed_dims": 64}})


def test_dpt_layers_scale_vggt_1b_layers():
    assert dpt_layers(24) == (4, 11, 17, 23)
    assert dpt_layers(4) == (0, 1, 2, 3)  # the fixtures' small models
    assert all(0 <= i < 2 for i in dpt_layers(2))


def test_pose_decoding_inverts_pose_encoding():
    torch.manual_seed(0)
    from diff4splat.geometry.rotations import axis_angle_to_matrix

    c2w = torch.eye(4).repeat(5, 1, 1)
    c2w[:, :3, :3] = axis_angle_to_matrix(torch.randn(5, 3), 0.5 * torch.randn(5))
    c2w[:, :3, 3] = torch.randn(5, 3)
    fx = torch.stack([torch.rand(5) + 0.5, torch.rand(5) + 0.7, torch.full((5,), 0.5), torch.full((5,), 0.5)], -1)
    back_c2w, back_fx = pose_decoding(pose_encoding(c2w, fx))
    torch.testing.assert_close(back_c2w, c2w, atol=1e-5, rtol=0)
    torch.testing.assert_close(back_fx, fx, atol=1e-5, rtol=0)
    enc = pose_encoding(c2w, fx)
    torch.testing.assert_close(pose_encoding(*pose_decoding(enc)), enc, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------------------------------
# Released checkpoints from local paths
# ----------------------------------------------------------------------------------------------------------------------


def test_released_kinds_and_strict_loading(tmp_path, caplog):
    _, config = read_io("vggt_small_io.safetensors")
    heads = config["encoder_num_heads"]
    movies, vggt = load_file(MOVIES_WEIGHTS), load_file(VGGT_WEIGHTS)
    assert released_kind(movies) == "movies" and released_kind(vggt) == "vggt" and released_kind({}) is None
    # VGGT's model.pt (torch.load weights_only) -> MoVieS's initialisation; every VGGT tensor used
    pt = tmp_path / "model.pt"
    torch.save({k: v.float() for k, v in vggt.items()}, pt)
    with caplog.at_level(logging.INFO):
        model = load_released(pt, encoder_num_heads=heads)
    assert model.config.encoder == "vggt" and model.dynamic
    assert any("MoVieS from VGGT" in r.getMessage() and "splat_head" in r.getMessage() for r in caplog.records)
    own = model.state_dict()
    assert torch.equal(
        own["backbone.backbone.frame_blocks.0.attn.qkv.weight"],
        vggt["aggregator.frame_blocks.0.attn.qkv.weight"].float(),
    )
    assert torch.equal(own["backbone.motion_head.projects.0.weight"], vggt["point_head.projects.0.weight"].float())
    # MoVieS strictly; a missing tensor is named
    broken = {k: v for k, v in movies.items() if k != "backbone.motion_splat_head.norm.bias"}
    with pytest.raises(WeightsError, match="motion_splat_head.norm.bias"):
        lrdm_from_released(broken, "broken.safetensors", encoder_num_heads=heads)
    with pytest.raises(WeightsError, match="neither a VGGT checkpoint"):
        lrdm_from_released({"x": torch.zeros(1)}, "other.safetensors")
    # training's init_from: into a model of the same architecture, strictly
    target = lrdm_from_released(movies, encoder_num_heads=heads)
    for p in target.parameters():
        torch.nn.init.zeros_(p)
    init_from_released(target, movies, "movies")
    for k, v in target.state_dict().items():
        assert torch.equal(v, movies[k].float()), k
    with pytest.raises(WeightsError, match="unexpected tensors"):
        init_from_released(LRDM(tiny_config(vggt=to_plain(target.config.vggt), dynamic=False)), movies, "movies")


def test_tiny_movies_checkpoint_saved_and_reloaded(tmp_path):
    """A seeded tiny VGGSplaT saved in the MoVieS layout (no metadata) loads back with its architecture read from the
    shapes: the tiny configuration needs no facts beyond them."""
    torch.manual_seed(0)
    model = LRDM(tiny_config())
    path = tmp_path / "movies_ckpt.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    again = load_released(path)
    assert again.config.vggt == model.config.vggt
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k


@torch.no_grad()
def test_query_times_in_one_pass_match_the_loop(one_thread):
    """``queries_per_pass``: the time-conditioned heads on several query times as one batch give the loop's numbers."""
    model, io, _ = fixture_lrdm()
    args = (io["images"], io["C2W"], io["fxfycxcy"], io["input_timesteps"], torch.tensor([[0.3, 0.85, 0.1]]))
    loop = model.backbone(*args, frames_chunk_size=2)
    for per_pass in (None, 2):
        batched = model.backbone(*args, frames_chunk_size=2, queries_per_pass=per_pass)
        assert batched.keys() == loop.keys()
        for key, value in loop.items():
            torch.testing.assert_close(batched[key], value, rtol=1e-5, atol=1e-5, msg=key)


@torch.no_grad()
def test_bf16_weights_without_autocast_stay_close_to_float32(one_thread):
    """Inference with bf16 weights and no autocast (the benchmark's default): the inputs are cast to the weights'
    dtype, RoPE and the heads' activations run in float32, and the depth, offsets and Gaussians stay within bf16
    rounding of the float32 model's."""
    model, io, _ = fixture_lrdm()
    args = (io["images"], io["C2W"], io["fxfycxcy"], io["input_timesteps"], torch.tensor([[0.3, 0.85]]))
    ref = model.backbone(*args, frames_chunk_size=2, queries_per_pass=None)
    model.backbone.to(torch.bfloat16)
    out = model.backbone(*args, frames_chunk_size=2, queries_per_pass=None)
    for key in ("depth", "offset", "color", "opacity"):
        assert out[key].dtype == torch.float32, key
        err = (out[key] - ref[key]).abs().max() / ref[key].abs().max()
        assert 0 < err < 0.05, (key, float(err))
    # time-dependent attributes where both models agree on which pixels move (the 0.005 threshold is a step)
    same = (out["offset"].norm(dim=3, keepdim=True) >= 0.005) == (ref["offset"].norm(dim=3, keepdim=True) >= 0.005)
    assert same.float().mean() > 0.9
    err = ((out["color_t"] - ref["color_t"]) * same).abs().max() / ref["color_t"].abs().max()
    assert 0 < err < 0.05, float(err)


def test_head_checkpointing_gives_the_same_gradients(one_thread):
    """`DPTHead.checkpointing` (on with gradient_checkpointing): the same loss and gradients, recomputed per chunk."""
    model, io, _ = fixture_lrdm()
    args = (io["images"], io["C2W"], io["fxfycxcy"], io["input_timesteps"], torch.tensor([[0.3, 0.85]]))
    grads = []
    for enabled in (False, True):
        model.zero_grad(set_to_none=True)
        model.backbone.set_head_checkpointing(enabled)
        out = model.backbone(*args, frames_chunk_size=1, queries_per_pass=None)
        loss = sum(out[k].square().mean() for k in ("depth", "offset", "color_t", "scale"))
        loss.backward()
        heads = model.backbone.dpt_heads()
        grads.append([p.grad.clone() for h in heads for p in h.parameters() if p.grad is not None])
        grads[-1].append(model.backbone.backbone.frame_blocks[0].mlp.fc1.weight.grad.clone())
    assert len(grads[0]) == len(grads[1]) > 10
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
