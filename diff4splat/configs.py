"""Typed configs: architecture hyper-parameters are dataclasses, and a YAML block becomes one only if every key is
known. A misspelt key is an error naming the key, the config section and the valid keys (never a silent default).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

T = TypeVar("T")


class ConfigError(ValueError):
    """A config block does not match its typed schema."""


def to_dataclass(cls: type[T], cfg: Mapping[str, Any] | DictConfig | T | None, where: str = "config") -> T:
    """Build ``cls`` (a dataclass) from ``cfg``, validating names and types.

    ``where`` names the config section in error messages (e.g. ``"model"`` or ``"system.loss"``).
    """
    if isinstance(cfg, cls):
        return cfg
    if cfg is None:
        return cls()
    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    data.pop("_target_", None)
    valid = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = [k for k in data if k not in valid]
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown} for {cls.__name__}; valid keys: {valid}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), data)
    except (ConfigKeyError, ValidationError) as e:
        raise ConfigError(f"{where}: {e}") from e
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def to_plain(obj: Any) -> Any:
    """Plain Python containers for dataclasses / DictConfigs (safe for ``torch.load(weights_only=True)``)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, DictConfig):
        return OmegaConf.to_container(obj, resolve=True)
    return obj
