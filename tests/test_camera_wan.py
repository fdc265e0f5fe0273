"""CameraWan, the flow-matching diffusion system and camera-controlled sampling, on tiny instances of the real classes
(a 2-layer diffusers ``WanTransformer3DModel``, a random tiny Wan VAE)."""

from __future__ import annotations

import copy
import os
import socket

import pytest
import torch

from diff4splat.geometry.trajectories import make_trajectory
from diff4splat.models.camera_wan import (
    CameraWan,
    CameraWanConfig,
    flow_sigmas_shift,
    gaussian_bump_weight,
    plucker_for_latents,
)
from diff4splat.pipelines.camera_video import SamplingConfig, generate_video, sample_latents
from diff4splat.systems.diffusion import CameraDiffusionSystem

TINY = {"arch": "tiny", "vae_stride": [4, 8, 8]}


def _inputs(b: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 16, 3, 4, 4, generator=g)
    text = torch.randn(b, 8, 32, generator=g)
    tr = make_trajectory("orbit_left", 9, strength=0.5)
    c2w = tr.c2w.float()[None].expand(b, -1, -1, -1)
    k = tr.fxfycxcy.float()[None].expand(b, -1, -1)
    return x, text, c2w, k


@pytest.mark.parametrize("injection", ["add", "concat"])
def test_zero_init_is_exactly_the_base_transformer(injection: str) -> None:
    torch.manual_seed(0)
    model = CameraWan.from_config(CameraWanConfig(**TINY, camera_injection=injection))
    base = copy.deepcopy(model.transformer)
    x, text, c2w, k = _inputs()
    t = model.token_timesteps(torch.tensor([300.0, 800.0]), x.shape)
    plucker = plucker_for_latents(c2w, k, 32, 32)
    out = model(x, t, text, plucker)
    assert torch.equal(out, base(x, t, text, return_dict=False)[0])
    # the camera branch is live: once its weights move, the cameras change the output
    for p in model.camera.parameters():
        torch.nn.init.normal_(p, std=0.05)
    assert not torch.allclose(model(x, t, text, plucker), out, atol=1e-4)
    # the base model's state-dict keys are untouched (diffusers upgrades and weight conversion keep working)
    assert {k[len("transformer.") :] for k in model.state_dict() if k.startswith("transformer.")} == set(
        base.state_dict()
    )


def test_per_token_timesteps_put_zero_on_the_first_latent_frame() -> None:
    model = CameraWan.from_config(CameraWanConfig(**TINY))
    x, text, _, _ = _inputs()
    t = torch.tensor([250.0, 900.0])
    tt = model.token_timesteps(t, x.shape)
    per_frame = (x.shape[3] // 2) * (x.shape[4] // 2)
    assert tt.shape == (2, 3 * per_frame)
    assert torch.equal(tt[:, :per_frame], torch.zeros(2, per_frame))
    assert torch.equal(tt[:, per_frame:], t[:, None].expand(-1, 2 * per_frame))
    # diffusers' per-token path: all tokens at t equals the scalar-timestep path
    same = model.token_timesteps(t, x.shape, num_cond_frames=0)
    a = model(x, same, text)
    b = model(x, t, text)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # and the first frame's tokens see t = 0: their outputs equal a run where every token is at 0 ...
    zero = model(x, torch.zeros(2), text)
    f0 = model(x, tt, text)
    assert not torch.allclose(f0[:, :, :1], a[:, :, :1], atol=1e-4)  # ... which differs from t for that frame
    assert zero.shape == f0.shape


def test_replace_first_frame_and_schedule_helpers() -> None:
    x, _, _, _ = _inputs()
    cond = torch.randn(2, 16, 1, 4, 4)
    y = CameraWan.replace_first_frame(x, cond)
    assert torch.equal(y[:, :, :1], cond) and torch.equal(y[:, :, 1:], x[:, :, 1:])
    u = torch.linspace(0, 1, 11)
    s = flow_sigmas_shift(u, 5.0)
    torch.testing.assert_close(s, 5 * u / (1 + 4 * u))
    w = gaussian_bump_weight(torch.linspace(0, 1000, 1000))
    assert abs(float(w.mean()) - 1.0) < 1e-3 and float(w.min()) >= 0
    assert float(gaussian_bump_weight(torch.tensor([500.0]))) > float(gaussian_bump_weight(torch.tensor([50.0])))


def test_cfg_dropout_drops_prompt_and_cameras_together() -> None:
    torch.manual_seed(0)
    system = CameraDiffusionSystem(model=TINY, text_len=8)
    system.configure_model()
    for p in system.model.camera.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x, text, c2w, k = _inputs()
    batch = {"latents": x, "c2w": c2w, "fxfycxcy": k, "prompt_embeds": text}
    sig, noise = torch.tensor([0.5, 0.5]), torch.randn_like(x)
    dropped = system.flow_loss(batch, sig, noise, torch.tensor([True, True]))[0]
    uncond = {"latents": x, "c2w": c2w, "fxfycxcy": k, "prompt_embeds": torch.zeros_like(text)}
    zero_cams = torch.zeros_like(system.plucker(batch, x))
    manual = system.flow_loss(uncond, sig, noise, torch.tensor([False, False]), plucker=zero_cams)[0]
    torch.testing.assert_close(dropped, manual)
    kept = system.flow_loss(batch, sig, noise, torch.tensor([False, False]))[0]
    assert not torch.allclose(kept, dropped)
    # the training rate: ~10 % of samples, both parts at once (the released code kept them for 10 % instead)
    system.train()
    frac = torch.stack([system.flow_loss(batch)[1]["dropped"] for _ in range(150)]).mean()
    assert 0.05 < float(frac) < 0.16


def test_short_training_lowers_the_loss() -> None:
    """Two procedural scenes, each filmed along four camera paths (identical first frames), encoded by the tiny VAE:
    a short training of the flow-matching objective halves the loss at σ = 0.5 (fixed noise)."""
    from datamodules.video import SyntheticVideoDataModule, collate_videos

    torch.manual_seed(0)
    dm = SyntheticVideoDataModule(synthetic={"height": 32, "width": 32, "dynamic": False}, pool=8, val_pool=0,
                                  trajectories_per_scene=4, trajectory_strength=1.0)  # fmt: skip
    dm.setup("fit")
    batch = dm.on_after_batch_transfer(collate_videos(dm._train.samples), 0)
    arch = {"num_attention_heads": 8, "attention_head_dim": 16, "ffn_dim": 256}
    system = CameraDiffusionSystem(model={**TINY, "arch_overrides": arch}, vae="tiny", vae_z_dim=16, text_len=8,
                                   optim={"lr": 2e-3, "base_lr_mult": 1.0, "warmup_steps": 20})  # fmt: skip
    system.configure_model()
    optimizer = system.configure_optimizers()["optimizer"]
    x0 = system.batch_latents(batch)
    cams = system.plucker(batch, x0)
    n = x0.shape[0]
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    keep = torch.zeros(n, dtype=torch.bool)

    def loss_at_half() -> float:
        with torch.no_grad():
            return float(system.flow_loss(batch, torch.full((n,), 0.5), noise, keep, cams, x0)[0].mean())

    start = loss_at_half()
    g = torch.Generator().manual_seed(1)
    for _ in range(300):
        idx = torch.randint(0, n, (8,), generator=g)
        sub = {"c2w": batch["c2w"][idx], "fxfycxcy": batch["fxfycxcy"][idx]}
        loss = system.flow_loss(sub, latents=x0[idx], plucker=cams[idx])[0].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    end = loss_at_half()
    assert end < 0.5 * start, (start, end)


def test_sampling_is_deterministic_per_seed_and_decodes() -> None:
    from diff4splat.models.wan_vae import WanVAE

    torch.manual_seed(0)
    model = CameraWan.from_config(CameraWanConfig(**TINY)).eval()
    for p in model.camera.parameters():
        torch.nn.init.normal_(p, std=0.05)
    vae = WanVAE.tiny(z_dim=16, calibrate=True)
    x, text, c2w, k = _inputs(b=1)
    image = torch.rand(1, 3, 32, 32)
    for scheduler in ("unipc", "euler"):
        cfg = SamplingConfig(scheduler=scheduler, steps=4, guidance_scale=3.0, seed=7)
        lat_a, video = generate_video(model, vae, image, c2w, k, text, None, cfg)
        lat_b, _ = generate_video(model, vae, image, c2w, k, text, None, cfg)
        assert torch.equal(lat_a, lat_b)
        lat_c, _ = generate_video(model, vae, image, c2w, k, text, None, SamplingConfig(scheduler, 4, 3.0, seed=8))
        assert not torch.allclose(lat_a, lat_c)
        assert video.shape == (1, 9, 3, 32, 32) and float(video.min()) >= 0 and float(video.max()) <= 1
        assert torch.equal(lat_a[:, :, :1], vae.encode(image[:, None]))  # the condition frame is kept
    # guidance: one batched forward per step = two separate branches
    cond = x[:, :, :1]
    plucker = plucker_for_latents(c2w, k, 32, 32)
    guided = sample_latents(model, cond, 3, text, None, plucker, SamplingConfig("euler", 1, 4.0, seed=3))
    g = torch.Generator("cpu").manual_seed(3)
    z = torch.randn((1, 16, 3, 4, 4), generator=g)
    xin = CameraWan.replace_first_frame(z, cond)
    sched = __import__("diff4splat.pipelines.camera_video", fromlist=["make_scheduler"]).make_scheduler(
        SamplingConfig("euler", 1, 4.0, seed=3)
    )
    sched.set_timesteps(1)
    t = sched.timesteps[0]
    tt = model.token_timesteps(t.float().expand(1), xin.shape)
    with torch.no_grad():
        c = model(xin, tt, text, plucker)
        u = model(xin, tt, torch.zeros_like(text), torch.zeros_like(plucker))
    manual = CameraWan.replace_first_frame(sched.step(u + 4.0 * (c - u), t, z, return_dict=False)[0], cond)
    torch.testing.assert_close(guided, manual, rtol=1e-5, atol=1e-5)


def test_camera_weights_and_lora_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    model = CameraWan.from_config(CameraWanConfig(**TINY, lora_rank=4))
    groups = model.parameter_groups()
    assert groups["base"] == [] and len(groups["camera"]) > 2  # LoRA: the base DiT is frozen
    for p in groups["camera"]:
        torch.nn.init.normal_(p, std=0.02)
    path = model.save_camera_weights(tmp_path / "camera.safetensors")
    torch.manual_seed(1)
    other = CameraWan.from_config(CameraWanConfig(**TINY, lora_rank=4))
    other.transformer.load_state_dict({k: v for k, v in model.transformer.state_dict().items() if "lora_" not in k},
                                      strict=False)  # fmt: skip
    other.load_camera_weights(path)
    x, text, c2w, k = _inputs()
    t = model.token_timesteps(torch.tensor([100.0, 600.0]), x.shape)
    p = plucker_for_latents(c2w, k, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x, t, text, p), other(x, t, text, p))
    with pytest.raises(ValueError, match="injection"):
        CameraWan.from_config(CameraWanConfig(**TINY, camera_injection="concat")).load_camera_weights(path)
    with pytest.raises(FileNotFoundError):
        model.load_camera_weights(tmp_path / "missing.safetensors")


def test_plucker_size_mismatch_is_a_clear_error() -> None:
    model = CameraWan.from_config(CameraWanConfig(**TINY))
    x, text, c2w, k = _inputs()
    t = torch.tensor([100.0, 600.0])
    with pytest.raises(ValueError, match="Plücker maps must be"):
        model(x, t, text, plucker_for_latents(c2w, k, 64, 64))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fsdp2_checkpointed_training_path_matches_unsharded() -> None:
    """FSDP2 per block (one-process gloo mesh) with full / selective checkpointing: loss and camera gradients equal
    the plain model's, and the state-dict keys stay diffusers' (no wrapper prefixes)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ["MASTER_PORT"] = str(_free_port())
        dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,), mesh_dim_names=("data_parallel",))
        x, text, c2w, k = _inputs()
        batch = {"latents": x, "c2w": c2w, "fxfycxcy": k, "prompt_embeds": text}
        sig, noise, drop = torch.tensor([0.3, 0.9]), torch.randn_like(x), torch.tensor([False, True])

        def run(mode: str | None):
            scale = {"checkpoint_mode": mode or "none", "param_dtype": "float32"}
            system = CameraDiffusionSystem(model=TINY, text_len=8, scale=scale)
            system._device_mesh = mesh if mode else None
            torch.manual_seed(0)
            system.configure_model()
            loss = system.flow_loss(batch, sig, noise, drop)[0].mean()
            loss.backward()
            grad = system.model.camera.plucker.weight.grad
            grad = grad.full_tensor() if hasattr(grad, "full_tensor") else grad
            return float(loss), grad, set(system.model.state_dict())

        ref_loss, ref_grad, ref_keys = run(None)
        assert float(ref_grad.abs().max()) > 0
        for mode in ("full", "selective", "none"):
            loss, grad, keys = run(mode)
            assert keys == ref_keys
            assert loss == pytest.approx(ref_loss, rel=1e-6)
            torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-7)
    finally:
        dist.destroy_process_group()


def test_camctrl_tiny_experiment_runs_through_train(make_cfg) -> None:
    """The Hydra experiment trains, validates (true vs shuffled cameras, a sampled video) and tests end to end."""
    from diff4splat.train import train

    cfg = make_cfg("experiment=camctrl_tiny", "trainer.max_steps=4", "trainer.val_check_interval=4", "data.pool=8",
                   "data.val_pool=4", "data.batch_size=2", "data.batches_per_epoch=4", "data.synthetic.height=32",
                   "data.synthetic.width=32", "system.sampling.steps=2")  # fmt: skip
    metrics, _ = train(cfg)
    for key in ("val/loss", "val/loss_shuffled_cameras", "val/psnr_sampled", "test/loss"):
        assert key in metrics and metrics[key] == metrics[key], key


@pytest.mark.parametrize(("kernel", "shape"), [((4, 8, 8), (2, 6, 9, 32, 40)), ((1, 2, 2), (1, 6, 5, 8, 6)),
                                               ((4, 4, 4), (1, 3, 13, 18, 17))])  # fmt: skip
def test_causal_conv_as_patchify_matmul_equals_the_convolution(kernel, shape):
    """CausalConv3d runs kernel = stride as patchify + matmul; it must equal nn.Conv3d on the causally padded input
    (float64: to rounding), remainders dropped as a convolution drops them, with the same state dict."""
    from diff4splat.models.camera_wan import CausalConv3d

    torch.manual_seed(0)
    conv = CausalConv3d(shape[1], 7, kernel_size=kernel, stride=kernel).double()
    x = torch.randn(*shape, dtype=torch.float64)
    kt = kernel[0]
    padded = torch.cat([x[:, :, :1].expand(-1, -1, kt - 1, -1, -1), x], dim=2) if kt > 1 else x
    ref = torch.nn.functional.conv3d(padded, conv.weight, conv.bias, stride=kernel)
    out = conv(x)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    assert set(conv.state_dict()) == {"weight", "bias"}


def test_prepare_blocks_compiles_inside_the_checkpoint_and_keeps_keys():
    """Blocks are compiled for real (dynamo captures their frames; `nn.Module.compile()` silently did not) and then
    wrapped for checkpointing; outputs, gradients and state-dict keys equal the eager blocks'."""
    import torch._dynamo

    from diff4splat.models.parallel import compile_in_place, prepare_blocks

    torch.manual_seed(0)
    blocks = torch.nn.ModuleList([torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU()) for _ in range(3)])
    ref = copy.deepcopy(blocks)
    keys = set(blocks.state_dict())
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    with pytest.MonkeyPatch.context() as mp:  # the eager backend: real dynamo capture, no C++ build on CPU
        mp.setattr("diff4splat.models.parallel.compile_in_place", lambda m: compile_in_place(m, backend="eager"))
        prepare_blocks(blocks, checkpoint_blocks=-1, compile_blocks=True, mode="full")
    assert all(type(b).__name__ == "CheckpointWrapper" for b in blocks)
    assert set(blocks.state_dict()) == keys
    x = torch.randn(4, 8, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    y, y_ref = x, x_ref
    for b, r in zip(blocks, ref, strict=True):
        y, y_ref = b(y), r(y_ref)
    torch.testing.assert_close(y, y_ref)
    y.square().sum().backward()
    y_ref.square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    assert torch._dynamo.utils.counters["frames"]["ok"] >= 1
