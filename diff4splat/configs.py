"""Typed configs: architecture hyper-parameters are dataclasses, and a YAML block becomes one only if every key is
known and every value has the declared type. A misspelt key is an error naming the key, the config section and the
valid keys; a wrong value names the field, the expected type and the value (never a silent default).

Supported annotations: bool, int, float (ints accepted), str, ``Literal[...]``, ``X | None``, ``list[X]``,
``tuple[X, ...]`` / ``tuple[X, Y]``, ``dict`` and nested dataclasses.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

from omegaconf import DictConfig, ListConfig, OmegaConf

T = TypeVar("T")


class ConfigError(ValueError):
    """A config block does not match its typed schema."""


def _plain(value: Any) -> Any:
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: expected one of {list(args)}, got {value!r}")
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {args}")
    if dataclasses.is_dataclass(tp):
        return to_dataclass(tp, value, where)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)} ({value!r})")
            items = [_convert(v, a, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value))]
        else:
            item_tp = args[0] if args else Any
            items = [_convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def to_dataclass(cls: type[T], cfg: Mapping[str, Any] | DictConfig | T | None, where: str = "config") -> T:
    """Build ``cls`` (a dataclass) from ``cfg``, validating names and types.

    ``where`` names the config section in error messages (e.g. ``"system.model"``).
    """
    if isinstance(cfg, cls):
        return cfg
    if cfg is None:
        return cls()
    data = _plain(cfg)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of {cls.__name__} fields, got {data!r}")
    data = {k: v for k, v in data.items() if k != "_target_"}
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown} for {cls.__name__}; valid keys: {list(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {k: _convert(_plain(v), hints[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def to_plain(obj: Any) -> Any:
    """Plain Python containers for dataclasses / DictConfigs (safe for ``torch.load(weights_only=True)``)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, DictConfig):
        return OmegaConf.to_container(obj, resolve=True)
    return obj


def check_top_level_keys(cfg: Mapping[str, Any], train_yaml: str | Path | None = None) -> None:
    """Fail on a top-level key of a composed training config that ``conf/train.yaml`` does not declare (its own keys
    and its defaults-list groups). Hydra refuses such a key on the command line, but merges it silently from an
    experiment file (``optimised_metric: ...`` would otherwise be ignored without a word)."""
    path = Path(train_yaml) if train_yaml is not None else Path(__file__).resolve().parents[1] / "conf" / "train.yaml"
    declared = OmegaConf.load(path)
    known = {str(k) for k in declared if k != "defaults"} | {"hydra"}
    for entry in declared.get("defaults", []):
        names = [entry] if isinstance(entry, str) else list(entry.keys())
        for name in names:
            known.add(str(name).replace("optional ", "").replace("override ", "").strip("/ "))
    unknown = sorted(str(k) for k in cfg if str(k) not in known)
    if unknown:
        raise ConfigError(f"unknown top-level key(s) {unknown} (not declared in {path}); valid keys: {sorted(known)}")
