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
    datamodule = hydra.utils.instantiate(cfg.data, _recursive_=False)
    system = hydra.utils.instantiate(cfg.system, _recursive_=False)
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=instantiate_callbacks(cfg.callbacks),
                                      logger=instantiate_loggers(cfg.logger))  # fmt: skip
    assert isinstance(datamodule, L.LightningDataModule)
    assert isinstance(system, L.LightningModule)
    assert isinstance(trainer, L.Trainer) and trainer.max_steps == 4
    assert sum(p.numel() for p in system.parameters() if p.requires_grad) > 0


@pytest.mark.parametrize("trainer", TRAINERS)
def test_trainer_configs_compose(make_cfg, trainer):
    cfg = make_cfg(f"trainer={trainer}", tiny=False)
    OmegaConf.to_container(cfg.trainer, resolve=True)
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"
    if trainer == "ddp_sim":
        t = hydra.utils.instantiate(cfg.trainer)
        assert t.world_size == 2 and t.strategy.__class__.__name__ == "DDPStrategy"


@pytest.mark.parametrize("group", ["debug=fdr", "debug=overfit", "debug=limit", "debug=profiler", "logger=wandb",
                                   "logger=many", "logger=csv", "launcher=slurm"])  # fmt: skip
def test_optional_groups_compose(make_cfg, group):
    cfg = make_cfg(group, tiny=False)
    assert cfg.task_name


def test_unknown_top_level_key_fails(make_cfg):
    with pytest.raises(ConfigCompositionException, match="num_gaussianz"):
        make_cfg("num_gaussianz=5")


def _config_error(cfg) -> ConfigError:
    with pytest.raises(InstantiationException) as info:
        hydra.utils.instantiate(cfg.system, _recursive_=False)
    assert isinstance(info.value.__cause__, ConfigError)
    return info.value.__cause__


def test_misspelt_model_key_names_it(make_cfg):
    err = _config_error(make_cfg("+model.num_gaussianz=5"))
    assert "system.model: unknown key(s) ['num_gaussianz']" in str(err) and "num_gaussians" in str(err)


def test_misspelt_system_key_names_it(make_cfg):
    err = _config_error(make_cfg("+system.optim.lr_meanz=1"))
    assert "system.optim: unknown key(s) ['lr_meanz']" in str(err)


def test_wrong_type_names_field(make_cfg):
    err = _config_error(make_cfg("model.num_gaussians=many"))
    assert "system.model.num_gaussians: expected an integer, got 'many'" in str(err)


def test_wrong_choice_names_field(make_cfg):
    err = _config_error(make_cfg("system=reconstruction", "model=lrdm_tiny", "data=synthetic", "model.encoder=rbg"))
    assert "system.model.encoder: expected one of ['rgb', 'latent'], got 'rbg'" in str(err)


def test_paths_have_no_absolute_defaults():
    for yaml in CONF.rglob("*.yaml"):
        text = yaml.read_text()
        for line in text.splitlines():
            value = line.split(":", 1)[-1].strip()
            assert not value.startswith(("/home", "/data", "/mnt", "/scratch", "/work")), f"{yaml}: {line}"
