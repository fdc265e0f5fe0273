"""Checks shared by the converter tests: the CLI's per-sequence loop, and clips that survive the tar members."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np

from datamodules.sources.base import ConvertOptions, SourceError
from datamodules.spec import Clip, decode_sample, encode_clip, validate_clip


def convert_all(source: ModuleType, root: Path, opts: ConvertOptions) -> tuple[dict, dict]:
    """The converter loop as the CLI runs it over ``opts.split``: {sequence: clips}, {sequence: SourceError}."""
    ok, errors = {}, {}
    for seq in source.list_sequences(root, opts.split):
        try:
            ok[seq] = list(source.convert_sequence(root, seq, opts))
        except SourceError as e:
            errors[seq] = e
    return ok, errors


def assert_valid_and_survives_encoding(clip: Clip) -> None:
    """``clip`` passes the deep schema check and comes back unchanged from its tar members."""
    validate_clip(clip, deep=True)
    back = decode_sample({"__key__": clip.key, **encode_clip(clip)})
    assert back.meta == clip.meta and all(
        np.array_equal(a, back.arrays()[n], equal_nan=True) for n, a in clip.arrays().items()
    )
