"""Reading weight files safely: ``.safetensors``, or ``torch.load(weights_only=True)`` for ``.pt`` / ``.pth`` /
``.ckpt``, never a plain unpickle. A file that would need arbitrary Python objects to load (a pickle that could run
code) is refused before anything in it runs. Writing them: `save_safetensors`, atomically.

Every failure is a `WeightsError` (a ``ValueError``, so the CLIs print it as one ``error:`` line) that names what was
being loaded, the file, and the expected form: unreadable or truncated files, refused pickles, and state dicts whose
keys or shapes do not match the model.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from diff4splat.files import atomic_file


class WeightsError(ValueError):
    """A weight file cannot be used: names the file and what is wrong."""


def refused_global(message: str) -> str:
    """The line of torch's weights-only error that names the refused global (``GLOBAL posix.system``)."""
    for line in message.splitlines():
        if "GLOBAL" in line or "Unsupported global" in line:
            return line.strip()
    return message.strip().splitlines()[-1] if message.strip() else "unknown reason"


def load_torch_file(path: str | os.PathLike, what: str) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with errors that name ``what`` and the file.

    Only tensors and plain containers (dicts, lists, tuples, numbers, strings) load; any other object in the pickle
    is refused without being created."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no file at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise WeightsError(
            f"{what}: {path}: refused to load: the pickle holds Python objects other than tensors and plain "
            f"containers ({refused_global(str(e))}); expected a state dict saved with torch.save or a .safetensors "
            f"file (pickles that need code to load are never unpickled)"
        ) from e
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, ImportError) as e:
        first = str(e).strip().split(". ")[0]
        raise WeightsError(
            f"{what}: {path}: not a readable PyTorch checkpoint ({type(e).__name__}: {first}); expected a complete "
            f"file written by torch.save, or a .safetensors file"
        ) from e


def load_safetensors(path: str | os.PathLike, what: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(tensors, string metadata) of a ``.safetensors`` file; a missing, truncated or foreign file is an error naming
    ``what`` and the file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no file at {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except Exception as e:  # noqa: BLE001 - SafetensorError and OSError alike mean an unreadable file
        raise WeightsError(
            f"{what}: {path}: not a readable .safetensors file ({type(e).__name__}: {e}); expected a complete "
            f"file written by safetensors"
        ) from e
    return tensors, meta


def read_state_dict(path: str | os.PathLike, what: str) -> dict[str, Tensor]:
    """Tensors of a ``.safetensors`` file or of a ``torch.load(weights_only=True)`` checkpoint (a plain state dict,
    or one nested under ``state_dict`` / ``model``)."""
    if str(path).endswith(".safetensors"):
        return load_safetensors(path, what)[0]
    state = load_torch_file(path, what)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError(f"{what}: {path}: expected a state dict of tensors")
    return state


def save_safetensors(
    tensors: Mapping[str, Tensor],
    path: str | os.PathLike,
    metadata: Mapping[str, str] | None = None,
    fsync: bool = True,
) -> Path:
    """Write ``tensors`` (contiguous, each with its own storage) and string ``metadata`` to a ``.safetensors`` file
    through `diff4splat.files.atomic_file`: the file appears complete or not at all (``fsync=False``: caches)."""
    from safetensors.torch import save_file

    with atomic_file(path, fsync=fsync) as tmp:
        save_file(dict(tensors), str(tmp), metadata=dict(metadata) if metadata is not None else None)
    return Path(path)


def _names(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_state_checked(model: nn.Module, state: Mapping[str, Any], path: str | os.PathLike, what: str) -> None:
    """``model.load_state_dict(state)`` (strict) with an error naming the file and the missing, unexpected and
    mis-shaped tensors instead of PyTorch's report without the file."""
    own = model.state_dict()
    not_tensors = sorted(k for k, v in state.items() if not isinstance(v, Tensor))
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} (model {tuple(own[k].shape)})"
        for k in own
        if k in state and isinstance(state[k], Tensor) and state[k].shape != own[k].shape
    )
    problems = []
    if not_tensors:
        problems.append(f"not tensors: {_names(not_tensors)}")
    if missing:
        problems.append(f"missing tensors: {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {_names(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches: {_names(shapes)}")
    if problems:
        raise WeightsError(
            f"{what}: {path}: the weights do not match the model ({type(model).__name__}): {'; '.join(problems)}"
        )
    model.load_state_dict(state)
