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


def _lists(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_lists(v) for v in value]
    return value


def to_plain(obj: Any) -> Any:
    """Plain Python containers for dataclasses / DictConfigs (safe for ``torch.load(weights_only=True)``); tuples
    become lists at every depth (nested dataclasses too), so YAML and JSON writers take them."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _lists(dataclasses.asdict(obj))
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
        valid = sorted(k for k in known if not k.startswith("_"))
        raise ConfigError(f"unknown top-level key(s) {unknown} (not declared in {path}); valid keys: {valid}")


def _lookup_parent(cfg: DictConfig, key: str) -> tuple[str, list[str]] | None:
    """The deepest existing section on the path of ``key`` and its keys, or None when ``key`` exists."""
    parts = key.split(".")
    node: Any = cfg
    for i, part in enumerate(parts):
        if not isinstance(node, DictConfig) or part not in node:
            where = ".".join(parts[:i]) or "<top level>"
            return where, sorted(str(k) for k in node) if isinstance(node, DictConfig) else []
        node = node._get_node(part)
    return None


def _trainer_type_errors(cfg: DictConfig) -> list[str]:
    """Values of ``trainer.*`` that cannot be what `lightning.Trainer` declares for them (an int for
    ``max_steps``, ...), checked for the plain annotations only."""
    import inspect

    if not isinstance(cfg.get("trainer"), DictConfig):  # no trainer: lightning (seconds to import) is not needed
        return []
    try:
        import lightning as L

        hints = typing.get_type_hints(L.Trainer.__init__)
    except Exception:  # an annotation that does not evaluate: nothing to check against
        return []
    errors = []
    params = inspect.signature(L.Trainer.__init__).parameters
    trainer = cfg.get("trainer")
    if not isinstance(trainer, DictConfig):
        return []
    for key in trainer:
        key = str(key)
        if key not in params or key not in hints:
            continue
        node = trainer._get_node(key)
        if node is None or node._is_interpolation():
            continue
        value = node._value()
        tp = hints[key]
        allowed = typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else (tp,)
        if not all(a in (int, float, bool, str, type(None)) for a in allowed):
            continue
        ok = (
            (value is None and type(None) in allowed)
            or (isinstance(value, bool) and bool in allowed)
            or (isinstance(value, int) and not isinstance(value, bool) and (int in allowed or float in allowed))
            or (isinstance(value, float) and float in allowed)
            or (isinstance(value, str) and str in allowed)
        )
        if not ok:
            want = " or ".join("null" if a is type(None) else a.__name__ for a in allowed)
            errors.append(f"trainer.{key}: expected {want}, got {value!r}")
    return errors


def check_overrides(config_dir: str | Path, config_name: str, args: list[str]) -> str | None:
    """Compose ``config_name`` with the command line's overrides before Hydra makes a run folder; return one error
    message (None when the config is fine): a misspelt key names itself and lists the valid keys where it was
    looked up, a ``trainer`` value of the wrong type names the field and the expected type. Sweeps (``-m a=1,2``)
    are checked with their first value."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    tokens = [a for a in args if not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(tokens)
    except HydraException as e:
        return str(e).splitlines()[0]
    config_dir = Path(config_dir).resolve()
    overrides: list[str] = []
    sweeps: list[tuple[int, list[str]]] = []  # (index in overrides, the other values of a sweep)
    for o in parsed:
        if o.key_or_group.startswith("hydra.") or o.key_or_group == "hydra":
            continue
        if o.is_sweep_override():
            try:
                values = [f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()]
            except Exception:  # a sweep kind with no listable values (glob, interval): not checked here
                continue
            if not values:
                continue
            sweeps.append((len(overrides), values[1:]))
            overrides.append(values[0])
        else:
            overrides.append(o.input_line)
    if GlobalHydra.instance().is_initialized():
        return None  # inside a running Hydra app (tests, a multirun job): it composed the config already
    variants = [overrides] + [
        [v if i == k else o for k, o in enumerate(overrides)] for i, others in sweeps for v in others
    ]
    for variant in variants[:32]:
        error = _check_composition(config_dir, config_name, variant)
        if error is not None:
            return error
    return None


def _is_group(config_dir: Path, key: str) -> bool:
    return (config_dir / key.lstrip("+~").replace(".", "/")).is_dir()


def _check_composition(config_dir: Path, config_name: str, overrides: list[str]) -> str | None:
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            try:
                cfg = compose(config_name, overrides=overrides)
            except HydraException as e:
                plain = [
                    o
                    for o in overrides
                    if "=" in o
                    and not o.startswith(("+", "~"))
                    and "@" not in o
                    and not _is_group(config_dir, o.split("=", 1)[0])
                ]
                for o in plain:
                    key = o.split("=", 1)[0]
                    try:
                        base = compose(config_name, overrides=[x for x in overrides if x != o])
                    except HydraException:
                        continue
                    missing = _lookup_parent(base, key)
                    if missing is not None and OmegaConf.select(base, key, default="__absent__") == "__absent__":
                        where, keys = missing
                        return (
                            f"{key}: no such key in the config; valid keys under {where}: {', '.join(keys)} "
                            f"(use +{key}=... to add a new one)"
                        )
                msg = " ".join(str(e).split("Config search path")[0].split())
                cause = e.__cause__
                return f"{msg} ({' '.join(str(cause).split())})" if cause is not None else msg
    except HydraException as e:
        return " ".join(str(e).split())
    if config_name.startswith("train"):
        try:
            check_top_level_keys(cfg)
        except ConfigError as e:
            return str(e)
    errors = _trainer_type_errors(cfg)
    return errors[0] if errors else None
