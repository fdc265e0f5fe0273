"""VGGT and MoVieS (VGGSplaT) against their reference implementations.

Fixtures (tests/fixtures/vggt/, see its README): small seeded configurations of the reference code run in float32 on
the CPU (facebookresearch/vggt@44b3afb, chenguolin/MoVieS@b2611f2), and the full-size key/shape manifests of
``facebook/VGGT-1B`` and ``movies_ckpt.safetensors``.

Parity criterion: |ours - reference| <= 1e-5 * max(1, |reference|), i.e. 1e-5 absolute for values up to 1 and 1e-5
relative above (the heads' ``exp`` outputs reach ~26, where one float32 ulp is 2e-6 and GEMM rounding that depends on
memory alignment and thread count, amplified by ``exp``, reaches ~1e-5 absolute). Measured on one thread: VGGT
bit-exact; MoVieS <= 5.7e-6 absolute everywhere except the motion confidence (1.5e-5 at |ref| = 19, 1.5e-6 relative).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from diff4splat.models.dpt import DPTConfig
from diff4splat.models.movies import VGGSplat, VGGSplatConfig, activate_gaussians, pose_encoding, vggt_key
from diff4splat.models.vggt import (
    VGGT,
    AggregatorConfig,
    CameraHeadConfig,
    EncoderConfig,
    VGGTConfig,
)
from diff4splat.weights import WeightsError, load_state_checked

FIXTURES = Path(__file__).parent / "fixtures" / "vggt"
VGGT_WEIGHTS = FIXTURES / "vggt_small_weights.safetensors"
MOVIES_WEIGHTS = FIXTURES / "movies_small_weights.safetensors"
TOL = 1e-5


def read_io(name: str) -> tuple[dict[str, torch.Tensor], dict]:
    with safe_open(str(FIXTURES / name), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
        meta = f.metadata()
    return tensors, json.loads(meta["config"])


def assert_matches(ours: torch.Tensor, ref: torch.Tensor, name: str) -> float:
    assert ours.shape == ref.shape, f"{name}: shape {tuple(ours.shape)} != reference {tuple(ref.shape)}"
    err = ((ours - ref).abs() / ref.abs().clamp(min=1.0)).max().item()
    assert err <= TOL, f"{name}: max error {err:.3g} (scaled by max(1, |ref|)) > {TOL}"
    return err


@pytest.fixture
def one_thread():
    """The fixtures were written single-threaded; one thread reproduces their reductions most closely."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_facts(config: dict) -> dict:
    """What the small checkpoints' shapes cannot say (see VGGT.config_from_state_dict)."""
    return {"encoder_num_heads": config["encoder_num_heads"], "layers": config["dpt_layers"]}


def expected_small_vggt_config(c: dict) -> VGGTConfig:
    dpt = {
        "dim_in": 2 * c["embed_dim"],
        "patch_size": c["patch_size"],
        "features": c["dpt_features"],
        "out_channels": tuple(c["dpt_out_channels"]),
        "layers": tuple(c["dpt_layers"]),
    }
    return VGGTConfig(
        encoder=EncoderConfig(
            embed_dim=c["embed_dim"],
            depth=c["encoder_depth"],
            num_heads=c["encoder_num_heads"],
            mlp_ratio=4.0,
            num_register_tokens=c["num_register_tokens"],
            patch_size=c["patch_size"],
            pos_grid=c["img_size"] // c["patch_size"],
        ),
        aggregator=AggregatorConfig(
            embed_dim=c["embed_dim"],
            depth=c["depth"],
            num_heads=c["num_heads"],
            mlp_ratio=c["mlp_ratio"],
            num_register_tokens=c["num_register_tokens"],
        ),
        camera_head=CameraHeadConfig(
            dim_in=2 * c["embed_dim"], trunk_depth=c["camera_trunk_depth"], num_heads=c["camera_num_heads"]
        ),
        depth_head=DPTConfig(**dpt, output_dim=2, activation="exp"),
        point_head=DPTConfig(**dpt, output_dim=4, activation="inv_log"),
    )


# ----------------------------------------------------------------------------------------------------------------------
# Parity with the reference
# ----------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def test_vggt_matches_reference(one_thread):
    io, config = read_io("vggt_small_io.safetensors")
    model = VGGT.from_checkpoint(VGGT_WEIGHTS, camera_num_heads=config["camera_num_heads"], **small_facts(config))
    model.eval()
    images = io["images"]
    encoder_tokens = model.aggregator.patch_embed(model.aggregator.normalize(images).flatten(0, 1))
    assert_matches(encoder_tokens, io["encoder.patch_tokens"], "encoder patch tokens")
    tokens, patch_start_idx = model.aggregator(images)
    assert patch_start_idx == 1 + config["num_register_tokens"]
    for i, t in enumerate(tokens):
        assert_matches(t, io[f"aggregator.tokens.{i}"], f"aggregator layer {i}")
    out = model(images)
    assert len(out["pose_enc_list"]) == 4
    for i, pose in enumerate(out["pose_enc_list"]):
        assert_matches(pose, io[f"pose_enc_list.{i}"], f"pose encoding, iteration {i}")
    for key in ("depth", "depth_conf", "world_points", "world_points_conf"):
        assert_matches(out[key], io[key], key)


@torch.no_grad()
def test_vggt_frame_chunks_and_kept_layers_change_nothing():
    io, config = read_io("vggt_small_io.safetensors")
    model = VGGT.from_checkpoint(VGGT_WEIGHTS, camera_num_heads=config["camera_num_heads"], **small_facts(config))
    full = model(io["images"], frames_chunk_size=None)
    chunked = model(io["images"], frames_chunk_size=1)
    for key in ("depth", "world_points_conf"):
        torch.testing.assert_close(chunked[key], full[key], rtol=1e-5, atol=1e-6)
    tokens, _ = model.aggregator(io["images"], keep_layers=[1, -1])
    assert [t is not None for t in tokens] == [False, True, False, True]


@torch.no_grad()
def test_movies_matches_reference(one_thread):
    io, config = read_io("movies_small_io.safetensors")
    # the fixture holds the checkpoint's own names ("backbone." + ...), as movies_ckpt.safetensors
    model = VGGSplat.from_checkpoint(MOVIES_WEIGHTS, **small_facts(config)).eval()
    assert model.is_dynamic
    assert_matches(pose_encoding(io["C2W"], io["fxfycxcy"]), io["pose_encoding"], "pose encoding")
    out = model(
        io["images"], io["C2W"], io["fxfycxcy"], io["input_timesteps"], io["output_timesteps"], frames_chunk_size=2
    )
    assert_matches(out["depth"], io["depth"], "depth")
    assert_matches(out["depth_conf"][:, :, 0], io["depth_conf"], "depth_conf")
    for key in ("color", "scale", "rotation", "opacity", "conf"):
        assert_matches(out[key], io[key], key)
    assert_matches(out["offset"], io["motions"][:, :, :, :3], "offset")
    assert_matches(out["offset_conf"], io["motions"][:, :, :, 3:], "offset_conf")
    for q in range(config["query_times"]):
        for key in ("color", "scale", "rotation", "opacity", "conf"):
            assert_matches(out[f"{key}_t"][:, q], io[f"motion_splat.{q}.motion_{key}"], f"{key} at query {q}")
    gaussians = activate_gaussians(out, io["C2W"], io["fxfycxcy"])
    names = {"means": "xyz", "colors": "color", "scales": "scale", "quats": "rotation", "opacities": "opacity"}
    for q in range(config["query_times"]):
        for ours, ref in names.items():
            assert_matches(gaussians[ours][:, q], io[f"render.{q}.{ref}"], f"activated {ours} at query {q}")


@torch.no_grad()
def test_movies_motion_mask_selects_static_attributes():
    """Pixels that move less than 0.005 keep the static attributes; the fixture has both kinds."""
    io, config = read_io("movies_small_io.safetensors")
    model = VGGSplat.from_checkpoint(MOVIES_WEIGHTS, **small_facts(config)).eval()
    out = model(io["images"], io["C2W"], io["fxfycxcy"], io["input_timesteps"], io["output_timesteps"])
    still = out["offset"].norm(dim=3, keepdim=True) < 0.005  # [B, Q, F, 1, H, W]
    assert 0.2 < still.float().mean() < 0.8
    static = out["scale"][:, None].expand_as(out["scale_t"])
    assert torch.equal(torch.where(still, out["scale_t"], static), static)
    assert (out["scale_t"] - static).abs().amax(dim=3, keepdim=True)[~still].min() > 0


# ----------------------------------------------------------------------------------------------------------------------
# Architecture from shapes, full-size manifests, strict loading
# ----------------------------------------------------------------------------------------------------------------------


def test_config_inference_recovers_the_small_configs():
    _, config = read_io("vggt_small_io.safetensors")
    sd = load_file(VGGT_WEIGHTS)
    inferred = VGGT.config_from_state_dict(sd, camera_num_heads=config["camera_num_heads"], **small_facts(config))
    assert inferred == expected_small_vggt_config(config)

    movies = VGGSplat.config_from_state_dict(load_file(MOVIES_WEIGHTS), **small_facts(config))
    vggt_like = expected_small_vggt_config(config)
    assert movies.encoder == vggt_like.encoder
    assert movies.aggregator == AggregatorConfig(**{**vggt_like.aggregator.__dict__, "extra_dim": 9, "time_dim": 20})
    assert movies.depth_head == vggt_like.depth_head
    gs = {**vggt_like.depth_head.__dict__, "output_dim": 12, "activation": "linear"}
    assert movies.splat_head == DPTConfig(**{**gs, "shortcut_dim": 3})
    assert movies.motion_splat_head == DPTConfig(**{**gs, "shortcut_dim": 11, "time_dim": 20})
    assert movies.motion_head == DPTConfig(**{**gs, "output_dim": 4, "time_dim": 20})
    assert (movies.sh_degree, movies.time_dim, movies.plucker) == (0, 20, True)


def meta_state_dict(manifest: Path) -> dict[str, torch.Tensor]:
    entries = json.loads(manifest.read_text())
    return {k: torch.empty(v["shape"], dtype=getattr(torch, v["dtype"]), device="meta") for k, v in entries.items()}


def assert_same_keys_and_shapes(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    assert sorted(own) == sorted(state)
    assert {k: (tuple(v.shape), v.dtype) for k, v in own.items()} == {
        k: (tuple(v.shape), v.dtype) for k, v in state.items()
    }


def test_full_size_vggt_loads_the_vggt_1b_manifest():
    state = meta_state_dict(FIXTURES / "vggt_1b_manifest.json")
    assert sum(k.startswith("track_head.") for k in state) == 394  # the one part not implemented
    state = {k: v for k, v in state.items() if not k.startswith("track_head.")}
    config = VGGT.config_from_state_dict(state)
    assert config == VGGTConfig()  # the defaults are VGGT-1B
    with torch.device("meta"):
        model = VGGT(config)
    assert_same_keys_and_shapes(model, state)
    load_state_checked(model, state, "vggt_1b_manifest.json", "VGGT")


def test_full_size_movies_loads_the_movies_manifest():
    state = meta_state_dict(FIXTURES / "movies_manifest.json")
    assert all(k.startswith("backbone.") for k in state)  # SplatRecon's wrapper, as in movies_ckpt.safetensors
    config = VGGSplat.config_from_state_dict(state)
    assert config == VGGSplatConfig()  # the defaults are the released dynamic model
    with torch.device("meta"):
        model = VGGSplat(config)
    state = {k.removeprefix("backbone."): v for k, v in state.items()}
    assert_same_keys_and_shapes(model, state)
    load_state_checked(model, state, "movies_manifest.json", "MoVieS")


def test_mismatched_checkpoint_names_the_tensors(tmp_path):
    sd = load_file(VGGT_WEIGHTS)
    _, config = read_io("vggt_small_io.safetensors")
    facts = {"camera_num_heads": config["camera_num_heads"], **small_facts(config)}
    broken = dict(sd)
    del broken["depth_head.scratch.refinenet2.out_conv.bias"]
    broken["depth_head.scratch.surplus.weight"] = torch.zeros(3)
    broken["camera_head.embed_pose.weight"] = torch.zeros(5, 9)
    with pytest.raises(WeightsError) as err:
        VGGT.from_state_dict(broken, "broken.safetensors", **facts)
    message = str(err.value)
    assert "broken.safetensors" in message
    assert "depth_head.scratch.refinenet2.out_conv.bias" in message  # missing
    assert "depth_head.scratch.surplus.weight" in message  # unexpected
    assert "camera_head.embed_pose.weight" in message  # wrong shape

    movies = {k: v for k, v in load_file(MOVIES_WEIGHTS).items() if k != "backbone.splat_head.shortcut.0.bias"}
    with pytest.raises(WeightsError, match="splat_head.shortcut.0.bias"):
        VGGSplat.from_state_dict(movies, **small_facts(config))


def test_vggt_model_pt_loads_with_torch_load_and_drops_the_track_head(tmp_path, caplog):
    _, config = read_io("vggt_small_io.safetensors")
    sd = {k: v.float() for k, v in load_file(VGGT_WEIGHTS).items()}
    path = tmp_path / "model.pt"
    torch.save({**sd, "track_head.tracker.fmap_norm.weight": torch.ones(4)}, path)
    with caplog.at_level(logging.INFO, logger="diff4splat.models.vggt"):
        model = VGGT.from_checkpoint(path, camera_num_heads=config["camera_num_heads"], **small_facts(config))
    assert "dropped 1 track_head" in caplog.text
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k


# ----------------------------------------------------------------------------------------------------------------------
# MoVieS initialised from VGGT
# ----------------------------------------------------------------------------------------------------------------------


def test_movies_from_vggt_loads_everything_vggt_has(caplog):
    _, config = read_io("vggt_small_io.safetensors")
    vggt_sd = {k: v.float() for k, v in load_file(VGGT_WEIGHTS).items()}
    with caplog.at_level(logging.INFO, logger="diff4splat.models.movies"):
        model = VGGSplat.from_vggt(vggt_sd, "vggt_small", **small_facts(config))
    reference = json.loads((FIXTURES / "movies_small_init_from_vggt.json").read_text())
    own = model.state_dict()
    # the same tensors come from VGGT as in MoVieS's VGGSplaT.__init__, and the same ones are new
    assert {k: vggt_key(k) for k in own if vggt_key(k)} == reference["from_vggt"]
    assert sorted(k for k in own if vggt_key(k) is None) == sorted(reference["new"])
    for key, source in reference["from_vggt"].items():
        assert torch.equal(own[key], vggt_sd[source]), key
    # new parts: zero where the reference zero-initialises (Plücker embedding, the heads' AdaLN), default elsewhere
    for key in reference["new"]:
        zero_init = key.startswith(("plucker_embed.", "plucker_ln.")) or ".time_embed." in key and "head" in key
        if zero_init:
            assert not own[key].any(), key
        elif key.endswith("weight") and own[key].ndim > 1:
            assert own[key].std() > 0, key
    (line,) = [r.getMessage() for r in caplog.records if "MoVieS from VGGT" in r.getMessage()]
    for part in (
        "plucker_embed",
        "backbone.extra_embed",
        "backbone.time_embed",
        "splat_head",
        "motion_head.time_embed",
    ):
        assert part in line
    assert "camera_head" in line  # unused VGGT part, reported

    del vggt_sd["aggregator.frame_blocks.0.attn.qkv.weight"]
    with pytest.raises(WeightsError, match="aggregator.frame_blocks.0.attn.qkv.weight"):
        VGGSplat.from_vggt(vggt_sd, **small_facts(config))


def test_static_movies_from_vggt_has_no_time_parts():
    _, config = read_io("vggt_small_io.safetensors")
    vggt_sd = load_file(VGGT_WEIGHTS)
    model = VGGSplat.from_vggt(vggt_sd, dynamic=False, **small_facts(config))
    assert not model.is_dynamic and model.config.aggregator.time_dim == 0
    images = torch.rand(1, 2, 3, 28, 42)
    c2w = torch.eye(4).repeat(1, 2, 1, 1)
    fxfycxcy = torch.tensor([1.0, 1.2, 0.5, 0.5]).repeat(1, 2, 1)
    with torch.no_grad():
        out = model(images, c2w, fxfycxcy)
    assert "offset" not in out and out["color"].shape == (1, 2, 3, 28, 42)
    gaussians = activate_gaussians(out, c2w, fxfycxcy)
    assert gaussians["means"].shape == (1, 1, 2, 3, 28, 42)
    # identity camera: the first pixel centre's ray is ((0.5/42 - cx)/fx, (0.5/28 - cy)/fy, 1) times the depth
    depth = out["depth"][0, 0, 0, 0, 0].clamp(0.001, 100)
    expected = depth * torch.tensor([(0.5 / 42 - 0.5) / 1.0, (0.5 / 28 - 0.5) / 1.2, 1.0])
    torch.testing.assert_close(gaussians["means"][0, 0, 0, :, 0, 0], expected)


def test_safetensors_round_trip_of_the_movies_checkpoint_layout(tmp_path):
    _, config = read_io("movies_small_io.safetensors")
    model = VGGSplat.from_checkpoint(MOVIES_WEIGHTS, **small_facts(config))
    path = tmp_path / "movies_ckpt.safetensors"
    save_file({"backbone." + k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    again = VGGSplat.from_checkpoint(path, **small_facts(config))
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k


@torch.no_grad()
def test_movies_under_bf16_autocast_stays_close_to_float32():
    """Geometry (Plücker rays, pose encoding, unprojection) stays float32 under autocast, as the reference's."""
    io, config = read_io("movies_small_io.safetensors")
    model = VGGSplat.from_checkpoint(MOVIES_WEIGHTS, **small_facts(config)).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(io["images"], io["C2W"], io["fxfycxcy"], io["input_timesteps"], io["output_timesteps"][:, 1:])
        gaussians = activate_gaussians(out, io["C2W"], io["fxfycxcy"])
    # the DPT heads' activations (exp for depth) run in float32 after the bf16 convolutions
    assert out["depth"].dtype == torch.float32
    rel = (out["depth"] - io["depth"]).abs() / io["depth"].abs()
    assert 0 < rel.max() < 0.05  # bf16 rounding, no more
    assert (gaussians["means"][:, 0].float() - io["render.1.xyz"]).abs().max() < 0.1


@pytest.mark.slow
@torch.no_grad()
def test_full_size_models_run_on_the_meta_device():
    with torch.device("meta"):
        vggt, movies = VGGT(), VGGSplat()
        images, c2w, fxfycxcy = torch.rand(1, 2, 3, 56, 70), torch.rand(1, 2, 4, 4), torch.rand(1, 2, 4)
        out = vggt(images)
        assert out["depth"].shape == (1, 2, 56, 70, 1) and out["pose_enc"].shape == (1, 2, 9)
        out = movies(images, c2w, fxfycxcy, torch.rand(1, 2), torch.rand(1, 3))
        assert out["offset"].shape == (1, 3, 2, 3, 56, 70) and out["color_t"].shape == (1, 3, 2, 3, 56, 70)
