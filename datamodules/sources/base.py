"""The interface every dataset converter implements, and the options `python -m datamodules.convert` passes.

A converter module ``datamodules/sources/<name>.py`` exposes:

    NAME: str                                        # "re10k", "tartanair", ...
    def list_sequences(root: Path, split: str) -> list[str]
        # the native sequences of ``split`` under the dataset ``root`` as distributed (sorted, deterministic ids)
    def convert_sequence(root: Path, sequence: str, opts: ConvertOptions) -> Iterator[Clip]
        # the clips of one sequence in the shared schema (datamodules.spec.Clip); raises SourceError for bad input

Conventions every converter follows (see ../shared/DESIGN.md): OpenCV c2w (F,4,4) in the dataset's own world
frame (canonicalisation happens at load time), normalised ``fxfycxcy`` of the *written* frames, depth as z-depth
in the units of c2w with ``meta.metric_scale`` = stored units per metre, ``meta.scale_source`` = where that unit
comes from (``ClipMeta.for_dataset`` fills it from `diff4splat.geometry.scale.DATASET_SCALE_SOURCE`: ``arbitrary`` for
SfM/SLAM poses, never ``metric``), sparse SfM points as ``points_world`` where the dataset ships them, tracks in world
coordinates with NaN where invisible. Clip keys are ``<sequence id with non [A-Za-z0-9_-] replaced by '-'>_<start frame:06d>``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from datamodules.spec import Clip


class SourceError(Exception):
    """Bad native input for one sequence: names the sequence, the file and what is wrong."""

    def __init__(self, sequence: str, file: str | Path, message: str):
        self.sequence, self.file, self.message = sequence, str(file), message
        super().__init__(f"sequence {sequence!r}, file {str(file)!r}: {message}")


@dataclass
class ConvertOptions:
    """What to cut from each sequence and how to write it."""

    split: str = "train"
    clip_length: int = 49  # frames per clip (the longest frame gap any training config samples, plus margin)
    stride: int = 1  # take every ``stride``-th native frame
    clip_step: int = 0  # frames between clip starts (in strided frames); 0 = clip_length (no overlap)
    max_side: int = 0  # resize so the longer image side is at most this (0 = keep native resolution)
    max_clips: int = 0  # per sequence; 0 = all
    frame_format: str = "jpg"  # jpg | png for written frames
    jpeg_quality: int = 95
    done_keys: frozenset[str] = frozenset()  # clips already written (resuming): converters skip loading them
    source_options: dict[str, Any] = field(default_factory=dict)  # the converter's own ``OPTIONS``, as parsed


class Converter(Protocol):
    NAME: str

    def list_sequences(self, root: Path, split: str) -> list[str]: ...

    def convert_sequence(self, root: Path, sequence: str, opts: ConvertOptions) -> Iterator[Clip]: ...


_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]")


def clip_key(sequence: str, start: int) -> str:
    """The shard key of the clip of ``sequence`` that starts at native frame ``start``."""
    return f"{_UNSAFE.sub('-', sequence)}_{start:06d}"


def clip_windows(num_frames: int, opts: ConvertOptions) -> list[list[int]]:
    """Native frame indices of each clip: windows of ``clip_length`` strided frames, ``clip_step`` apart.

    A sequence shorter than one clip gives one shorter clip (if it has at least 2 frames)."""
    strided = list(range(0, num_frames, max(1, opts.stride)))
    length = max(2, opts.clip_length)
    step = opts.clip_step or length
    if len(strided) < 2:
        return []
    if len(strided) <= length:
        windows = [strided]
    else:
        windows = [strided[s : s + length] for s in range(0, len(strided) - length + 1, step)]
    return windows[: opts.max_clips] if opts.max_clips else windows
