"""Every experiment composes and its datamodule, system and trainer instantiate; typos fail loudly."""

from __future__ import annotations

from pathlib import Path

import hydra
import lightning as L
import pytest
from hydra.errors import ConfigCompositionException, InstantiationException
from omegaconf import OmegaConf

from diff4splat.configs import ConfigError
from diff4splat.runs import instantiate_callbacks, instantiate_loggers

CONF = Path(__file__).resolve().parents[1] / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
TRAINERS = sorted(p.stem for p in (CONF / "trainer").glob("*.yaml") if p.stem != "default")


def test_there_are_experiments():
    assert len(EXPERIMENTS) >= 1


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_instantiates(make_cfg, experiment):
    cfg = make_cfg(f"experiment={experiment}")
    for key in cfg:  # every interpolation resolves
        if key != "hydra":
            OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
    assert cfg.task_name != "train" or experiment == "default", "experiments name their task (groups W&B runs)"
    best = (cfg.get("callbacks") or {}).get("model_checkpoint")
    if best is not None and best.get("monitor") and "loss" in str(cfg.optimized_metric):
        assert best.mode == "min", (
            f"experiment {experiment}: keeps the checkpoints of the highest {cfg.optimized_metric}"
        )
    for group in ("callbacks", "logger"):  # an override of an entry that does not exist would be silently ignored
        dangling = [k for k, v in (cfg.get(group) or {}).items() if v is not None and "_target_" not in v]
        assert not dangling, f"experiment {experiment}: {group}.{dangling} set no _target_ (a renamed entry?)"
    shrink_for_cpu(cfg)
    datamodule = hydra.utils.instantiate(cfg.data, _recursive_=False)
    system = hydra.utils.instantiate(cfg.system, _recursive_=False)
    trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=instantiate_callbacks(cfg.callbacks), logger=instantiate_loggers(cfg.logger)
    )
    assert isinstance(datamodule, L.LightningDataModule)
    assert isinstance(system, L.LightningModule)
    assert isinstance(trainer, L.Trainer) and trainer.max_steps == 4
    if getattr(system, "model", True) is None:  # built in configure_model (FSDP2 shards it there)
        system.configure_model()
    assert sum(p.numel() for p in system.parameters() if p.requires_grad) > 0


def shrink_for_cpu(cfg) -> None:
    """Keep an experiment's structure but make it instantiable on a CPU without weights: a 2-block model, a tiny
    random Wan VAE instead of the pretrained one, a random LPIPS backbone, no init checkpoint (checked to be a path
    under CKPT_ROOT)."""
    from omegaconf import open_dict

    with open_dict(cfg):
        if cfg.system._target_.endswith("ReconstructionSystem"):
            cfg.model.update(dim=48, depth=2, num_heads=4, decoder_channels=8)
            if cfg.model.encoder == "vggt":  # the 1B VGGSplaT -> the tiny one (same structure)
                cfg.model.vggt = OmegaConf.load(CONF / "model" / "lrdm_vggt_tiny.yaml").vggt
            if cfg.system.vae == "pretrained":
                cfg.system.vae = "tiny"
            cfg.system.loss.lpips_pretrained = False
            if cfg.system.init_from:
                paths = [cfg.system.init_from] if isinstance(cfg.system.init_from, str) else cfg.system.init_from
                assert all(str(p).startswith(str(cfg.paths.ckpt_root)) for p in paths)
                cfg.system.init_from = None
        if cfg.system._target_.endswith(("CameraDiffusionSystem", "DistillationSystem")):  # the 5B: 2 tiny blocks
            if cfg.model.init == "pretrained":
                assert str(cfg.model.pretrained_path).startswith(str(cfg.paths.ckpt_root))
            if cfg.model.camera_weights:
                assert str(cfg.model.camera_weights).startswith(str(cfg.paths.ckpt_root))
                cfg.model.camera_weights = None
            if cfg.system.get("adaptation") and cfg.system.adaptation.teacher_weights:  # distillation: no teacher here
                assert str(cfg.system.adaptation.teacher_weights).startswith(str(cfg.paths.ckpt_root))
                cfg.system.adaptation.teacher_weights = None
            channels = {"in_channels": 48, "out_channels": 48} if cfg.model.vae_stride[1] == 16 else {}
            if cfg.model.camera_injection == "fun":  # the Fun release's patch embedding: latents, mask, masked video
                channels["in_channels"] = 2 * 48 + 4
            cfg.model.update(arch="tiny", init="random", arch_overrides={**cfg.model.arch_overrides, **channels})
            cfg.system.text_cache = None
            if cfg.system.vae == "pretrained":
                cfg.system.vae = "tiny"
        if cfg.system._target_.endswith("LatentAlignmentSystem"):  # no released TAEHV / Wan VAE / LRDM weights here
            for key in ("taehv_path", "lrdm_init_from"):
                if cfg.system[key]:
                    assert str(cfg.system[key]).startswith(str(cfg.paths.ckpt_root))
                    cfg.system[key] = None
            cfg.system.vae = "tiny"
            cfg.system.loss.lpips_pretrained = False
            if cfg.system.lrdm is not None:
                cfg.system.lrdm.update(dim=48, depth=2, num_heads=4, decoder_channels=8)


@pytest.mark.parametrize("trainer", TRAINERS)
def test_trainer_configs_compose(make_cfg, trainer):
    cfg = make_cfg(f"trainer={trainer}", tiny=False)
    OmegaConf.to_container(cfg.trainer, resolve=True)
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"
    if trainer == "ddp_sim":
        t = hydra.utils.instantiate(cfg.trainer)
        assert t.world_size == 2 and t.strategy.__class__.__name__ == "DDPStrategy"


@pytest.mark.parametrize(
    "group",
    [
        "debug=fdr",
        "debug=overfit",
        "debug=limit",
        "debug=profiler",
        "logger=wandb",
        "logger=many",
        "logger=csv",
        "launcher=slurm",
    ],
)
def test_optional_groups_compose(make_cfg, group):
    cfg = make_cfg(group, tiny=False)
    assert cfg.task_name


def test_unknown_top_level_key_fails(make_cfg):
    with pytest.raises(ConfigCompositionException, match="num_gaussianz"):
        make_cfg("num_gaussianz=5")


def test_scene_fit_keys_are_typed_too(make_cfg):
    err = _config_error(make_cfg("experiment=fit_synthetic", "+model.num_gaussianz=5"))
    assert "system.model: unknown key(s) ['num_gaussianz'] for GaussianFieldConfig" in str(err)


def _config_error(cfg) -> ConfigError:
    with pytest.raises(InstantiationException) as info:
        hydra.utils.instantiate(cfg.system, _recursive_=False)
    assert isinstance(info.value.__cause__, ConfigError)
    return info.value.__cause__


def test_misspelt_model_key_names_it(make_cfg):
    err = _config_error(make_cfg("+model.dimm=5"))
    assert "system.model: unknown key(s) ['dimm'] for LRDMConfig; valid keys: ['encoder', 'dim'," in str(err)


def test_misspelt_system_key_names_it(make_cfg):
    err = _config_error(make_cfg("+system.optim.warmup=1"))
    assert "system.optim: unknown key(s) ['warmup']" in str(err) and "warmup_steps" in str(err)


def test_wrong_type_names_field(make_cfg):
    err = _config_error(make_cfg("model.dim=many"))
    assert "system.model.dim: expected an integer, got 'many'" in str(err)


def test_wrong_choice_names_field(make_cfg):
    err = _config_error(make_cfg("model.encoder=rbg"))
    assert "system.model.encoder: expected one of ['rgb', 'latent', 'vggt'], got 'rbg'" in str(err)


def test_paths_have_no_absolute_defaults():
    for yaml in CONF.rglob("*.yaml"):
        text = yaml.read_text()
        for line in text.splitlines():
            value = line.split(":", 1)[-1].strip()
            assert not value.startswith(("/home", "/data", "/mnt", "/scratch", "/work")), f"{yaml}: {line}"
