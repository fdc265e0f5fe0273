"""Few-step distillation (diff4splat.systems.distill) and the distilled sampler (sampling.mode=distilled), on tiny
instances of the real classes: a 2-layer CameraWan teacher trained on the camctrl_tiny scenes."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from unittest import mock

import pytest
import torch
from test_camera_wan import camctrl_tiny_setup, fit_camctrl  # tests/ is on sys.path (no __init__.py)

from diff4splat.models.camera_wan import CameraWan, CameraWanConfig, plucker_for_latents
from diff4splat.sampling import DISTILLED_TIMESTEPS, SamplingConfig, distilled_timesteps, sample_latents
from diff4splat.systems.distill import DistillationSystem, export_student
from diff4splat.weights import save_safetensors

TINY = {"arch": "tiny", "vae_stride": [4, 8, 8]}


def _tiny_inputs(b: int = 2):
    from diff4splat.geometry.trajectories import make_trajectory

    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, 16, 3, 4, 4, generator=g)
    text = torch.randn(b, 8, 32, generator=g)
    tr = make_trajectory("orbit_left", 9, strength=0.5)
    c2w = tr.c2w.float()[None].expand(b, -1, -1, -1)
    k = tr.fxfycxcy.float()[None].expand(b, -1, -1)
    return x, text, c2w, k


def _live_camera_model(seed: int = 0) -> CameraWan:
    torch.manual_seed(seed)
    model = CameraWan.from_config(CameraWanConfig(**TINY)).eval()
    for p in model.camera.parameters():  # zero-initialised: give the cameras an effect
        torch.nn.init.normal_(p, std=0.05)
    return model


@pytest.mark.parametrize("renoise", ["fresh", "initial"])
def test_distilled_sampler_is_the_dmd_loop(renoise: str) -> None:
    """mode=distilled: one unguided forward per student timestep, x̂₀ = x - σv re-noised to the next timestep with
    fresh (seeded) or the initial noise; the first latent frame is the clean condition throughout."""
    model = _live_camera_model()
    x, text, c2w, k = _tiny_inputs()
    cond, plucker = x[:, :, :1], plucker_for_latents(c2w, k, 32, 32)
    cfg = SamplingConfig(mode="distilled", steps=3, seed=11, guidance_scale=5.0, renoise=renoise)
    out = sample_latents(model, cond, 3, text, torch.randn_like(text), plucker, cfg)

    gen = torch.Generator().manual_seed(11)
    z = torch.randn((2, 16, 3, 4, 4), generator=gen)
    latents, calls = z, 0
    with torch.no_grad():
        for i, t in enumerate([1000.0, 757.0, 522.0]):
            xin = CameraWan.replace_first_frame(latents, cond)
            v = model(xin, model.token_timesteps(torch.full((2,), t), xin.shape), text, plucker)
            calls += 1
            x0 = xin - t / 1000 * v
            if i < 2:
                eps = torch.randn(z.shape, generator=gen) if renoise == "fresh" else z
                latents = (1 - [757.0, 522.0][i] / 1000) * x0 + [757.0, 522.0][i] / 1000 * eps
    torch.testing.assert_close(out, CameraWan.replace_first_frame(x0, cond), rtol=1e-5, atol=1e-5)
    assert torch.equal(out[:, :, :1], cond)
    # the guidance scale is ignored (no CFG for a student), and the pipeline knows not to encode a negative prompt
    unguided = sample_latents(model, cond, 3, text, None, plucker, dataclasses.replace(cfg, guidance_scale=1.0))
    torch.testing.assert_close(out, unguided)
    assert not cfg.guided and SamplingConfig(guidance_scale=5.0).guided


def test_distilled_timesteps_and_their_errors() -> None:
    assert distilled_timesteps(SamplingConfig(mode="distilled", steps=3)) == [1000.0, 757.0, 522.0]  # FastWan
    assert distilled_timesteps(SamplingConfig(mode="distilled", steps=4)) == DISTILLED_TIMESTEPS[4]
    assert distilled_timesteps(SamplingConfig(mode="distilled", steps=2, timesteps=[900, 400])) == [900.0, 400.0]
    with pytest.raises(ValueError, match="sampling.timesteps"):
        distilled_timesteps(SamplingConfig(mode="distilled", steps=6))
    with pytest.raises(ValueError, match="descend"):
        distilled_timesteps(SamplingConfig(mode="distilled", steps=2, timesteps=[400, 900]))
    with pytest.raises(ValueError, match="2 entries"):
        distilled_timesteps(SamplingConfig(mode="distilled", steps=3, timesteps=[900, 400]))


def test_generate_refuses_a_distilled_schedule_it_cannot_run() -> None:
    """generate's option check names sampling.timesteps (an InputError: one line, exit 2) before anything is built."""
    from diff4splat.cli import InputError
    from diff4splat.pipelines.jobs import GenerateConfig, check_options

    with pytest.raises(InputError, match=r"sampling\.timesteps: sampling\.steps=5 with sampling\.mode=distilled"):
        check_options(GenerateConfig(sampling=SamplingConfig(mode="distilled", steps=5)))
    check_options(GenerateConfig(sampling=SamplingConfig(mode="distilled", steps=3)))


def _distill_system(**objective) -> DistillationSystem:
    torch.manual_seed(0)
    system = DistillationSystem(
        model=TINY,
        objective={"steps": 4, "generator_update_interval": 2, **objective},
        optim={"lr": 1e-3, "warmup_steps": 0, "min_lr_ratio": 1.0},
        text_len=8,
    )
    system.configure_model()
    for m in (system.teacher, system.student, system.critic):  # the same live camera branch in all three
        torch.manual_seed(1)
        for p in m.camera.parameters():
            torch.nn.init.normal_(p, std=0.05)
    return system


def _batch(b: int = 2) -> dict:
    x, text, c2w, k = _tiny_inputs(b)
    return {"latents": x, "c2w": c2w, "fxfycxcy": k, "prompt_embeds": text}


def test_dmd_gradient_vanishes_when_the_critic_is_the_unguided_teacher() -> None:
    """At initialisation the critic is the teacher: with guidance 1 the fake and real scores agree and the DMD loss
    is zero; with guidance it is not, and only the student gets gradients."""
    system = _distill_system(real_guidance=1.0)
    x0_data, cond, text, null, cams = system.conditions(_batch())
    x0, _ = system.student_sample(cond, x0_data.shape, text, cams)
    torch.manual_seed(3)
    loss, _ = system.dmd_loss(x0, cond, text, null, cams)
    assert float(loss.detach().abs().max()) < 1e-12  # zero up to the rounding of the batched teacher forward
    system.dmd.real_guidance = 4.0
    x0, _ = system.student_sample(cond, x0_data.shape, text, cams)
    loss, _ = system.dmd_loss(x0, cond, text, null, cams)
    assert float(loss.detach().min()) > 1e-4
    loss.mean().backward()
    assert all(p.grad is None for p in system.teacher.parameters())
    assert all(p.grad is None for p in system.critic.parameters())  # the critic runs without gradient in the DMD loss
    assert sum(float(p.grad.abs().sum()) for p in system.student.parameters() if p.grad is not None) > 0


def test_training_steps_update_the_critic_every_step_and_the_student_every_nth() -> None:
    """One optimizer, two groups: a critic-only step leaves the student bit-identical (AdamW skips parameters
    without gradient), a generator step moves both; the teacher never moves."""
    system = _distill_system(real_guidance=3.0)
    opt = system.configure_optimizers()["optimizer"]
    system.train()
    snap = {n: {k: v.clone() for k, v in getattr(system, n).state_dict().items()} for n in ("teacher", "student")}
    critic0 = {k: v.clone() for k, v in system.critic.state_dict().items()}

    def step(i: int) -> None:
        with mock.patch.object(DistillationSystem, "global_step", property(lambda self: i)):
            loss = system.training_step(_batch(), i)
        opt.zero_grad()
        loss.backward()
        system.configure_gradient_clipping(opt, 1.0)
        opt.step()

    step(1)  # interval 2: step 1 trains the critic only
    assert all(torch.equal(v, snap["student"][k]) for k, v in system.student.state_dict().items())
    assert any(not torch.equal(v, critic0[k]) for k, v in system.critic.state_dict().items())
    step(2)  # a generator step
    assert any(not torch.equal(v, snap["student"][k]) for k, v in system.student.state_dict().items())
    assert all(torch.equal(v, snap["teacher"][k]) for k, v in system.teacher.state_dict().items())
    assert not any(p.requires_grad for p in system.teacher.parameters())
    # the checkpoint holds each model once (the diffusion helpers' ``model`` is the teacher, not registered again)
    assert not any(k.startswith("model.") for k in system.state_dict())


@pytest.mark.parametrize("adapt", ["full", pytest.param("lora", marks=pytest.mark.slow)])
def test_distill_tiny_trains_through_the_trainer_and_the_student_exports(make_cfg, tmp_path, adapt: str) -> None:
    """experiment=distill_tiny runs through ``train`` (teacher from a camctrl-format export), its student export
    (``student.`` prefix) becomes a diffusers transformer folder + camera weights that load as a CameraWan with the
    student's exact outputs (LoRA merged)."""
    from diff4splat.train import train

    cfg0 = make_cfg("experiment=camctrl_tiny", "data.synthetic.height=32", "data.synthetic.width=32")
    torch.manual_seed(0)
    from hydra.utils import instantiate

    teacher_system = instantiate(cfg0.system)
    teacher_system.configure_model()
    teacher_path = tmp_path / "teacher.safetensors"
    save_safetensors(
        {k: v.contiguous() for k, v in teacher_system.model.state_dict().items()},
        teacher_path,
        {"format": "diff4splat-weights", "export_prefix": "model.", "system": "CameraDiffusionSystem"},
    )
    cfg = make_cfg(
        "experiment=distill_tiny",
        f"system.adaptation.teacher_weights={teacher_path}",
        f"system.adaptation.adapt={adapt}",
        "system.adaptation.lora_rank=4",
        "trainer.max_steps=3",
        "trainer.val_check_interval=3",
        "data.pool=8",
        "data.val_pool=4",
        "data.batch_size=2",
        "data.batches_per_epoch=3",
        "data.synthetic.height=32",
        "data.synthetic.width=32",
        "system.teacher_sampling.steps=2",
        "system.objective.generator_update_interval=2",
        "test=false",
    )
    metrics, objects = train(cfg)
    for key in ("train/critic", "train/dmd", "val/loss", "val/latent_mse_to_teacher"):
        assert key in metrics and metrics[key] == metrics[key], (key, sorted(metrics))
    export = next((tmp_path / "outputs").rglob("last.safetensors"))
    out = export_student(export, tmp_path / "student")
    plain = {
        "lora_rank": 0,
        "init": "pretrained",
        "pretrained_path": str(tmp_path / "student"),
        "camera_weights": str(out),
    }
    loaded = CameraWan.from_config({**dataclasses.asdict(objects["system"].student_cfg), **plain}).eval()
    student = objects["system"].student.eval()
    b = 2
    x = torch.randn(b, 48, 3, 2, 2)
    t = student.token_timesteps(torch.tensor([1000.0, 500.0]), x.shape)
    text = torch.randn(b, 8, student.text_dim)
    tr_c2w = torch.eye(4).expand(b, 9, 4, 4).clone()
    tr_c2w[:, :, 0, 3] = torch.linspace(0, 1, 9)
    k = torch.tensor([1.0, 1.0, 0.5, 0.5]).expand(b, 9, 4)
    cams = plucker_for_latents(tr_c2w, k, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, text, cams), student(x, t, text, cams), rtol=1e-4, atol=1e-4)


def _flow_loss(model: CameraWan, x0: torch.Tensor, text: torch.Tensor, cams: torch.Tensor) -> float:
    """Flow loss over σ ∈ {0.25, 0.5, 0.75, 1} (the 4-step student's timesteps) x 2 fixed noises (as the camera
    tests measure it)."""
    n, losses = x0.shape[0], []
    with torch.no_grad():
        for i, sigma in enumerate((0.25, 0.5, 0.75, 1.0)):
            for k in range(2):
                noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(100 * i + k))
                xt = model.replace_first_frame((1 - sigma) * x0 + sigma * noise, x0)
                tt = model.token_timesteps(torch.full((n,), sigma * 1000), xt.shape)
                losses.append(float((model(xt, tt, text, cams) - (noise - x0))[:, :, 1:].square().mean()))
    return sum(losses) / len(losses)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_distill_tiny_student_is_closer_to_the_guided_teacher_than_its_own_four_steps(make_cfg, tmp_path) -> None:
    """The distill_tiny recipe on a trained camctrl_tiny teacher (600 steps): 300 distillation steps (the system's
    own training_step, optimizer and clipping; the student every 5th step). On the held-out camera presets, from the
    same noise, the 4-step student's samples are closer (latent MSE) to the teacher's 25-step samples with CFG 2 than
    the teacher's own 4-step samples (UniPC, CFG 2) are, by at least 20 %; and the student follows the cameras as the
    teacher does: its relative camera gap, (loss with another path's cameras - loss with the true ones) / the former,
    is at least 0.9x the teacher's, for the flow loss (as the camera tests measure it) and, at 0.8x, for its samples'
    latent MSE to the clips.
    Measured: student 0.018 vs teacher 4 steps 0.036; flow-loss gap 0.387 vs 0.416 (absolute 0.335 vs 0.267); sample
    gap 0.171 vs 0.189 (absolute MSE differences)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _distill_and_compare(make_cfg, tmp_path)
    finally:
        torch.set_num_threads(threads)


def _distill_and_compare(make_cfg, tmp_path) -> None:
    from hydra.utils import instantiate

    cfg, teacher, sets = camctrl_tiny_setup(make_cfg, "trainer.max_steps=600")
    fit_camctrl(teacher, sets["train"][0], sets["train"][1], 600, cfg.data.batch_size)
    teacher_path = tmp_path / "teacher.safetensors"
    save_safetensors({k: v.contiguous() for k, v in teacher.model.state_dict().items()}, teacher_path, {})
    steps = 300
    cfg = make_cfg(
        "experiment=distill_tiny", f"system.adaptation.teacher_weights={teacher_path}", f"trainer.max_steps={steps}"
    )
    system = instantiate(cfg.system)
    system.configure_model()
    batch, x_train, _, _ = sets["train"]
    opt = system.configure_optimizers()
    optimizer, scheduler = opt["optimizer"], opt["lr_scheduler"]["scheduler"]
    system.train()
    g = torch.Generator().manual_seed(1)
    for step in range(steps):  # Lightning's automatic optimisation, with the latents precomputed
        idx = torch.randint(0, x_train.shape[0], (cfg.data.batch_size,), generator=g)
        sub = {"latents": x_train[idx], "c2w": batch["c2w"][idx], "fxfycxcy": batch["fxfycxcy"][idx]}
        with mock.patch.object(DistillationSystem, "global_step", property(lambda self, s=step: s)):
            loss = system.training_step(sub, step)
        optimizer.zero_grad()
        loss.backward()
        system.configure_gradient_clipping(optimizer, cfg.trainer.gradient_clip_val or 1.0)
        optimizer.step()
        scheduler.step()
    system.eval()

    _, x0, cams, perm = sets["held_out"]
    n, cond = x0.shape[0], x0[:, :, :1]
    text = system.null_text(n, x0.device)
    guidance = cfg.system.teacher_sampling.guidance_scale
    with torch.no_grad():
        ref = sample_latents(
            system.teacher, cond, 3, text, text, cams, SamplingConfig(steps=25, guidance_scale=guidance, seed=5)
        )
        own4 = sample_latents(
            system.teacher, cond, 3, text, text, cams, SamplingConfig(steps=4, guidance_scale=guidance, seed=5)
        )
        student = sample_latents(
            system.student, cond, 3, text, None, cams, dataclasses.replace(system.sampling, seed=5)
        )

    def mse(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b)[:, :, 1:].square().mean())

    closeness = {"student": mse(student, ref), "teacher_4_steps": mse(own4, ref)}
    assert closeness["student"] <= 0.8 * closeness["teacher_4_steps"], closeness
    gap = {}
    for name, model in (("teacher", system.teacher), ("student", system.student)):
        true, shuffled = _flow_loss(model, x0, text, cams), _flow_loss(model, x0, text, cams[perm])
        gap[name] = (shuffled - true) / shuffled
    with torch.no_grad():
        ref_other = sample_latents(
            system.teacher, cond, 3, text, text, cams[perm], SamplingConfig(steps=25, guidance_scale=guidance, seed=5)
        )
        student_other = sample_latents(
            system.student, cond, 3, text, None, cams[perm], dataclasses.replace(system.sampling, seed=5)
        )
    samples = {"teacher": mse(ref_other, x0) - mse(ref, x0), "student": mse(student_other, x0) - mse(student, x0)}
    print("distill_tiny:", closeness, gap, samples)
    assert gap["teacher"] > 0.05 and samples["teacher"] > 0.05, (gap, samples)  # the teacher uses its cameras ...
    assert gap["student"] >= 0.9 * gap["teacher"], (gap, closeness)  # ... and the student keeps that
    assert samples["student"] >= 0.8 * samples["teacher"], (samples, gap)


def test_generation_pipeline_samples_a_student_with_one_unguided_forward_per_step() -> None:
    """Generation with sampling.mode=distilled: the CameraWan runs once per student step on one branch (batch 1: no
    CFG whatever guidance_scale says), and the scene's latents are finite."""
    from diff4splat.geometry.trajectories import make_trajectory
    from diff4splat.pipelines.generation import Diff4SplatPipeline

    pipe = Diff4SplatPipeline.tiny(seed=0)
    tr = make_trajectory("orbit_left", 13, strength=0.3)
    image = torch.rand(3, 96, 160, generator=torch.Generator().manual_seed(0))
    batches: list[int] = []
    hook = pipe.camera_wan.register_forward_hook(lambda m, args, out: batches.append(int(out.shape[0])))
    try:
        cfg = SamplingConfig(mode="distilled", steps=4, guidance_scale=5.0, seed=3)
        gen = pipe(image, tr.c2w.float(), tr.fxfycxcy.float(), sampling=cfg, prompt="a boat")
    finally:
        hook.remove()
    assert batches == [1, 1, 1, 1]
    assert gen.latents.shape[1] == 4 and torch.isfinite(gen.latents).all()


def _tiny_teacher_file(path) -> None:
    """A camctrl_tiny-architecture teacher export (random weights, a live camera branch)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from diff4splat.configs import to_dataclass

    torch.manual_seed(0)
    with initialize_config_dir(config_dir=str(Path(__file__).parents[1] / "conf"), version_base="1.3"):
        cfg = compose("train.yaml", overrides=["experiment=distill_tiny"])
    model = CameraWan.from_config(to_dataclass(CameraWanConfig, OmegaConf.to_container(cfg.model), "model"))
    for p in model.camera.parameters():
        torch.nn.init.normal_(p, std=0.02)
    save_safetensors({k: v.contiguous() for k, v in model.state_dict().items()}, path, {"export_prefix": "model."})


@pytest.mark.slow
def test_distill_tiny_on_two_fsdp2_ranks_and_the_sharded_checkpoint_exports(tmp_path) -> None:
    """trainer=fsdp2 on 2 gloo processes: teacher, student and critic sharded per block, the student's simulated
    steps the same on both ranks (their collectives match: the run ends), validation sampling through the sharded
    models; the sharded last.ckpt exports the same student as the gathered last.safetensors beside it."""
    import subprocess

    from hydra.core.global_hydra import GlobalHydra
    from train_runs import train_cmd, train_env

    GlobalHydra.instance().clear()
    teacher = tmp_path / "teacher.safetensors"
    _tiny_teacher_file(teacher)
    GlobalHydra.instance().clear()
    cmd = train_cmd(
        "experiment=distill_tiny",
        "trainer=fsdp2",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "+trainer.strategy.process_group_backend=gloo",
        "trainer.precision=32",
        "system.scale.param_dtype=float32",
        f"system.adaptation.teacher_weights={teacher}",
        "trainer.max_steps=6",
        "trainer.val_check_interval=6",
        "data.pool=8",
        "data.val_pool=4",
        "data.batch_size=2",
        "data.batches_per_epoch=6",
        "system.teacher_sampling.steps=2",
        "test=false",
        "logger=csv",
        "extras.print_config=false",
        "~callbacks.progress_bar",
        "+trainer.enable_progress_bar=false",
    )
    proc = subprocess.run(cmd, env=train_env(tmp_path / "outputs"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sharded = next((tmp_path / "outputs").rglob("last.ckpt"))
    assert sharded.is_dir()  # a distributed checkpoint folder
    a = export_student(sharded, tmp_path / "from_shards")
    b = export_student(sharded.with_suffix(".safetensors"), tmp_path / "from_export")
    from diff4splat.weights import load_safetensors

    for name in ("transformer/diffusion_pytorch_model.safetensors",):
        sa, _ = load_safetensors(tmp_path / "from_shards" / name, "a")
        sb, _ = load_safetensors(tmp_path / "from_export" / name, "b")
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    ca, _ = load_safetensors(a, "a")
    cb, _ = load_safetensors(b, "b")
    assert all(torch.equal(ca[k], cb[k]) for k in ca)
