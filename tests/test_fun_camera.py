"""Wan2.2-Fun-5B-Control-Camera as a CameraWan mode: parity with VideoX-Fun (fixtures in tests/fixtures/fun_camera,
made by its own code), detection from tensor shapes, and the full-size release manifest loaded strictly on meta."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from diff4splat.geometry.trajectories import read_re10k_txt
from diff4splat.models import fun_camera as fc
from diff4splat.models.camera_wan import CameraWan
from diff4splat.weights import WeightsError

FIXTURES = Path(__file__).parent / "fixtures"
FUN = FIXTURES / "fun_camera"
POSE_FILE = FIXTURES / "re10k" / "pose_files" / "0bf152ef84195293.txt"
TEXT_LEN = 16  # the small reference transformer's text_len
ATOL = 1e-5


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    return load_file(FUN / "fun_small_io.safetensors")


@pytest.fixture(scope="module")
def release_state() -> dict[str, torch.Tensor]:
    """The small reference model's state dict under the release's key names (float16-exact values, as float32)."""
    return {k: v.float() for k, v in load_file(FUN / "fun_small_weights.safetensors").items()}


@pytest.fixture(scope="module")
def model(release_state) -> CameraWan:
    shapes = {k: tuple(v.shape) for k, v in release_state.items()}
    return fc.fun_camera_wan_from_state(release_state, fc.fun_arch_from_shapes(shapes, head_dim=12), torch.float32)


@pytest.fixture(scope="module")
def trajectory():
    return read_re10k_txt(POSE_FILE)


def padded_context(io) -> torch.Tensor:
    """The recorded prompt embeddings (negative, prompt) zero-padded to text_len, as the reference pads them."""
    ctx = torch.zeros(2, TEXT_LEN, io["context"].shape[-1])
    for i, n in enumerate(io["context_lens"].tolist()):
        ctx[i, :n] = io["context"][i, :n]
    return ctx


def plucker_9(trajectory) -> torch.Tensor:  # [2, 9, 6, 64, 96]: the pipeline run's cameras, both CFG branches
    return fc.fun_plucker(trajectory.c2w[:9], trajectory.fxfycxcy[:9], 64, 96)[None].expand(2, -1, -1, -1, -1)


# --- camera conditioning ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("tag", "size"), [("a", (16, 24)), ("b", (12, 32))])  # fx rescaled (3:2), fy rescaled (8:3)
def test_plucker_from_a_real_pose_file_matches_videox_fun(io, trajectory, tag: str, size: tuple[int, int]) -> None:
    ours = fc.fun_plucker(trajectory.c2w, trajectory.fxfycxcy, *size)
    assert ours.shape == (16, 6, *size)
    assert (ours - io[f"plucker.{tag}"]).abs().max() <= ATOL


def test_training_frame_alignment_matches_videox_fun(io, trajectory) -> None:
    """Pose rows interpolated over a 40-frame video, 9 frames sampled (the dataset's bucket path)."""
    w2c = torch.linalg.inv(trajectory.c2w)[:, :3].reshape(-1, 12)
    rows = torch.cat([trajectory.timestamps[:, None].double(), trajectory.fxfycxcy, torch.zeros(16, 2), w2c], 1)
    picked = fc.fun_pose_rows_for_frames(rows, 40, torch.linspace(0, 39, 9).long())
    assert (picked - io["train.rows"]).abs().max() <= 1e-9
    c2w, k = fc.fun_rows_to_cameras(picked)
    assert (fc.fun_plucker(c2w, k, 16, 24) - io["train.plucker"]).abs().max() <= ATOL


def test_moments_are_o_cross_d_whatever_the_frame_count(trajectory) -> None:
    """The reference's dim-less torch.cross crosses along the frame axis for exactly 3 frames; ours never does:
    the moment is perpendicular to the direction and has the norm of |o x d| for 3 frames as for 16."""
    for frames in (3, 16):
        rays = fc.fun_plucker(trajectory.c2w[:frames], trajectory.fxfycxcy[:frames], 8, 12)
        m, d = rays[:, :3], rays[:, 3:]
        assert (m * d).sum(1).abs().max() < 1e-6
        o = fc.fun_relative_c2w(trajectory.c2w[:frames])[:, :3, 3]
        cross = torch.linalg.cross(o[:, :, None, None].expand_as(d), d, dim=1)
        assert (m - cross).abs().max() < 1e-6


def test_packing_mask_and_token_timesteps_match_the_pipeline(io, trajectory, model) -> None:
    packed = fc.pack_fun_plucker(plucker_9(trajectory))  # [2, 24, 3, 64, 96]
    assert (packed[..., ::8, ::8] - io["y_camera.slice"]).abs().max() <= ATOL
    assert (packed.mean((-2, -1)) - io["y_camera.mean"]).abs().max() <= ATOL
    condition = fc.fun_condition(io["masked_video_latents"])
    assert torch.equal(condition.expand(2, -1, -1, -1, -1), io["y"])
    first = io["masked_video_latents"][:, :, :1]
    assert torch.equal(model.replace_first_frame(io["noise"], first).expand(2, -1, -1, -1, -1), io["x"])
    t = io["timesteps"][0].expand(2)
    assert torch.equal(model.token_timesteps(t, io["x"].shape), io["t"])
    image = io["image"]
    video = fc.fun_masked_video(image, 9)
    assert torch.equal(video[:, 0], image) and torch.all(video[:, 1:] * 2 - 1 == 0)
    with pytest.raises(ValueError, match=r"1 \+ 4k frames, got 8"):
        fc.pack_fun_plucker(plucker_9(trajectory)[:, :8])


# --- model parity ----------------------------------------------------------------------------------------------------
def test_adapter_matches_videox_fun(io, trajectory, model) -> None:
    with torch.no_grad():
        tokens = model.camera_tokens(plucker_9(trajectory))
    # the reference runs the two guidance branches one at a time (cfg_skip): its adapter output is one branch's
    assert tokens.shape == (2, 24, 3, 2, 3) and io["adapter_out"].shape == (1, 24, 3, 2, 3)
    assert (tokens - io["adapter_out"]).abs().max() <= ATOL


def test_transformer_forward_with_cameras_matches_videox_fun(io, trajectory, model) -> None:
    with torch.no_grad():
        out = model(io["x"], io["t"], padded_context(io), plucker=plucker_9(trajectory), condition=io["y"])
        no_cameras = model(io["x"], io["t"], padded_context(io), condition=io["y"])
    assert (out - io["noise_pred"]).abs().max() <= ATOL
    assert (no_cameras - io["noise_pred"]).abs().max() > 0.1  # the cameras reach the output
    with pytest.raises(ValueError, match=r"needs condition \[B, 12, T, h, w\]"):
        model(io["x"], io["t"], padded_context(io), plucker=plucker_9(trajectory))


def test_two_guided_euler_steps_match_the_videox_fun_pipeline(io, trajectory, model) -> None:
    """Guidance 6 on the prompt only (cameras and condition in both branches), the first frame held."""
    ctx = padded_context(io)
    latents = fc.sample_fun_latents(
        model,
        io["noise"],
        fc.fun_condition(io["masked_video_latents"]),
        plucker_9(trajectory)[:1],
        prompt_embeds=ctx[1:],
        negative_embeds=ctx[:1],
        num_inference_steps=2,
        guidance_scale=6.0,
    )
    assert (latents - io["latents"]).abs().max() <= ATOL


def test_wan_timestep_sinusoids_are_float64_ones() -> None:
    """The release's float64 sinusoids; diffusers' float32 ones move by more than the parity tolerance at t ~ 1000."""
    from diffusers.models.embeddings import Timesteps

    t = torch.tensor([999.0, 873.5, 0.0])
    freqs = torch.pow(10000, -torch.arange(128, dtype=torch.float64) / 128)
    angles = t.double()[:, None] * freqs
    expect = torch.cat([angles.cos(), angles.sin()], 1).float()
    assert torch.equal(fc.WanSinusoidalTimesteps(256)(t), expect)
    assert (Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)(t) - expect).abs().max() > ATOL


# --- detection, loading, the release manifest ------------------------------------------------------------------------
def test_a_fun_folder_is_detected_and_loads_through_camera_wan_config(tmp_path, io, trajectory, release_state) -> None:
    folder = tmp_path / "Wan2.2-Fun-5B-Control-Camera"
    folder.mkdir()
    save_file(release_state, str(folder / "diffusion_pytorch_model.safetensors"))
    kind, shapes = fc.detect_release(folder)
    assert kind == "fun_camera" and shapes["control_adapter.conv.weight"] == (24, 24 * 16 * 16, 2, 2)
    cfg = fc.camera_wan_config_for(folder, dtype="float32", head_dim=12)
    assert (cfg.camera_injection, cfg.init, cfg.vae_stride) == ("fun", "original", (4, 16, 16))
    model = CameraWan.from_config(cfg)
    assert (model.latent_channels, model.condition_channels) == (8, 12)
    with torch.no_grad():
        out = model(io["x"], io["t"], padded_context(io), plucker=plucker_9(trajectory), condition=io["y"])
    assert (out - io["noise_pred"]).abs().max() <= ATOL


def test_release_kind_reads_keys_and_shapes(release_state) -> None:
    from diff4splat.models import wan_convert

    shapes = {k: tuple(v.shape) for k, v in release_state.items()}
    assert fc.release_kind(shapes) == "fun_camera"
    ti2v = wan_convert.build_transformer(wan_convert.transformer_config(), device="meta")
    ti2v_shapes = {k: tuple(v.shape) for k, v in wan_convert.diffusers_to_original(ti2v.state_dict()).items()}
    assert fc.release_kind(ti2v_shapes) == "ti2v"
    wrong_in = dict(shapes, **{"patch_embedding.weight": (24, 16, 1, 2, 2)})  # 16 != 2 * 8 + 4
    assert fc.release_kind(wrong_in) is None
    no_blocks = {k: v for k, v in shapes.items() if not k.startswith("control_adapter.residual_blocks")}
    assert fc.release_kind(no_blocks) is None
    assert fc.release_kind({"encoder.0.weight": (64, 12, 3, 3)}) is None
    with pytest.raises(ValueError, match=r"no time_embedding\.0\.weight \(the architecture is read from them\)"):
        fc.fun_arch_from_shapes({k: v for k, v in shapes.items() if k != "time_embedding.0.weight"}, head_dim=12)


def test_a_folder_without_a_wan_dit_is_named(tmp_path, release_state) -> None:
    with pytest.raises(FileNotFoundError, match=r"no diffusion_pytorch_model\*\.safetensors"):
        fc.detect_release(tmp_path)
    save_file({"encoder.0.weight": torch.zeros(2, 2)}, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(
        ValueError, match=r"not a Wan2\.2-TI2V-5B or Wan2\.2-Fun camera DiT .*patch_embedding\.weight None"
    ):
        fc.detect_release(tmp_path)


def test_full_size_release_manifest_loads_strictly_on_meta() -> None:
    """VideoX-Fun's Wan2_2Transformer3DModel with the 5B Control-Camera config, built on meta (key -> shape)."""
    from diff4splat.models import wan_convert

    manifest = json.loads((FUN / "fun_5b_control_camera_manifest.json").read_text())["tensors"]
    shapes = {k: tuple(v[0]) for k, v in manifest.items()}
    arch = fc.fun_arch_from_shapes(shapes)
    shipped = wan_convert.transformer_config("fun_5b_control_camera")
    assert {k: arch.transformer[k] for k in shipped} == {k: v for k, v in shipped.items()}
    assert arch.vae_stride == (4, 16, 16)
    state = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    model = fc.fun_camera_wan_from_state(state, arch, torch.bfloat16, "manifest")
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert sum(p.numel() for p in model.parameters()) == sum(math.prod(s) for s in shapes.values()) == 5_245_802_688
    assert (model.latent_channels, model.condition_channels, model.dim) == (48, 52, 3072)

    missing = {k: v for k, v in state.items() if k != "control_adapter.residual_blocks.0.conv2.bias"}
    with pytest.raises(WeightsError, match=r"missing control_adapter\.\['residual_blocks\.0\.conv2\.bias'\]"):
        fc.fun_camera_wan_from_state(missing, arch, torch.bfloat16, "manifest")
    wrong = dict(state, **{"blocks.3.ffn.0.weight": torch.empty(14336, 3071, device="meta")})
    with pytest.raises(wan_convert.CheckpointMismatchError, match=r"blocks\.3\.ffn\.0\.weight \(14336, 3071\)"):
        fc.fun_camera_wan_from_state(wrong, arch, torch.bfloat16, "manifest")


def test_the_inference_preset_fits_the_model() -> None:
    p = fc.FUN_5B_CAMERA_PRESET
    assert (p.num_frames - 1) % 4 == 0 and p.height % 32 == 0 and p.width % 32 == 0  # VAE 4x16x16, patch 2
    assert (p.height, p.width, p.num_frames, p.fps, p.guidance_scale, p.shift) == (704, 1280, 121, 24, 6.0, 5.0)


# --- fine-tuning from the release ------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_the_fun_layout_fine_tunes_through_the_diffusion_system(make_cfg, tmp_path) -> None:
    """A tiny Fun-layout model written as a release folder is loaded by the diffusion system (init original, the
    camctrl_fun_5b path) and trained with training_step on synthetic clips: its condition is the masked video's
    latents (tiny Wan2.2-layout VAE), CFG dropout keeps the cameras, and 40 steps lower the flow loss at fixed σ and
    noise (measured: 2.57 -> 1.28) and move the release's adapter."""
    from hydra.utils import instantiate

    from datamodules.video import collate_videos
    from diff4splat.pipelines import public

    folder = tmp_path / public.FUN_RELEASE
    public.write_fun_release(public.tiny_fun_camera_wan(seed=0), folder)
    cfg = make_cfg(
        "experiment=camctrl_tiny",
        "model.camera_injection=fun",
        "model.init=original",
        f"model.original_paths=[{folder}]",
        "~model.arch_overrides",  # the architecture comes from the release folder's shapes
        "data.pool=8",
        "data.val_pool=4",
        "data.batch_size=4",
        "data.synthetic.height=64",
        "data.synthetic.width=64",
        "system.optim.warmup_steps=5",
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dm = instantiate(cfg.data)
        dm.setup("fit")
        system = instantiate(cfg.system)
        system.configure_model()
        assert isinstance(system.model.camera, fc.FunCameraAdapter) and system.model.condition_channels == 52
        released = {k: v.clone() for k, v in system.model.camera.state_dict().items()}
        batch = dm.on_after_batch_transfer(collate_videos(dm._train.samples), 0)
        x0 = system.batch_latents(batch)
        cond, cams = system.fun_condition(batch, x0), system.plucker(batch, x0)
        assert cond.shape == (8, 52, 3, 4, 4) and bool((cond[:, :4, 0] == 1).all()) and not cond[:, :4, 1:].any()
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
        n = x0.shape[0]

        def fixed_loss(drop: bool = False, text: torch.Tensor | None = None) -> torch.Tensor:
            b = dict(batch, prompt_embeds=text) if text is not None else batch
            keep = torch.full((n,), drop)
            return torch.stack(
                [system.flow_loss(b, torch.full((n,), s), noise, keep, cams, x0, cond)[0] for s in (0.25, 0.5, 0.75)]
            ).mean(0)

        with torch.no_grad():
            before = float(fixed_loss().mean())
            # the release's guidance drops only the prompt: a dropped sample = the null prompt, cameras kept
            torch.testing.assert_close(fixed_loss(drop=True), fixed_loss(text=system.null_text(n, x0.device)))
        opt = system.configure_optimizers()
        optimizer, scheduler = opt["optimizer"], opt["lr_scheduler"]["scheduler"]
        system.train()
        g = torch.Generator().manual_seed(1)
        for step in range(40):
            idx = torch.randint(0, n, (4,), generator=g)
            loss = system.training_step(
                {
                    "latents": x0[idx],
                    "first_frame": batch["frames"][idx, 0],
                    "c2w": batch["c2w"][idx],
                    "fxfycxcy": batch["fxfycxcy"][idx],
                    "key": [batch["key"][i] for i in idx],
                },
                step,
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        system.eval()
        with torch.no_grad():
            after = float(fixed_loss().mean())
    finally:
        torch.set_num_threads(threads)
    assert after < 0.7 * before, (before, after)
    moved = max(float((v - released[k]).abs().max()) for k, v in system.model.camera.state_dict().items())
    assert moved > 1e-4  # the release's adapter is continued, not frozen


def test_lora_on_the_release_trains_adapter_and_lora_and_round_trips(tmp_path) -> None:
    """model.lora_rank on the Fun release: the DiT frozen, the adapter and the LoRA trainable (the camera group), and
    the fine-tuned part saves and loads over a fresh copy of the release (models.camera_wan.camera_weights)."""
    from dataclasses import replace

    from diff4splat.pipelines import public

    folder = tmp_path / public.FUN_RELEASE
    public.write_fun_release(public.tiny_fun_camera_wan(seed=0), folder)
    cfg = replace(fc.camera_wan_config_for(folder, dtype="float32"), lora_rank=4)
    model = CameraWan.from_config(cfg)
    groups = model.parameter_groups()
    assert not groups["base"] and len(groups["camera"]) > len(list(model.camera.parameters()))
    with torch.no_grad():
        for p in groups["camera"]:
            p.add_(0.01)
    path = model.save_camera_weights(tmp_path / "camera.safetensors")
    again = CameraWan.from_config(replace(cfg, camera_weights=str(path)))
    for (k, a), b in zip(model.camera_state_dict().items(), again.camera_state_dict().values(), strict=True):
        assert torch.equal(a, b), k
