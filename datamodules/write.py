"""Validated, atomic, resumable WebDataset shard writing.

`ShardWriter` writes `Clip`s (see `datamodules.spec`) into tar shards named deterministically
`{split}-{index:06d}.tar` (or `{split}-p{part:03d}-{index:06d}.tar` for parallel writers of one split), each
written under a temporary name and renamed when complete, and keeps `manifest.json` in the output folder up to date
(finished shards, their clip keys, clip and frame counts, spec version, source). Every clip is validated before it
is written, so a shard never holds a sample that readers would reject.

Resuming: a converter that is killed and rerun opens the same folder again. Finished shards are kept (the manifest
lists their keys), unfinished temporary files are deleted, and `write()` of a clip whose key is already in a
finished shard is a no-op that returns False. Check `writer.is_done(key)` before doing expensive loading.

Usage (a converter):

    from datamodules.spec import Clip, ClipMeta, encode_frames
    from datamodules.write import ShardWriter

    with ShardWriter("/data/shards/re10k", source="re10k converter v1 from RealEstate10K/train",
                     split="train", maxcount=64, maxsize=512 << 20) as writer:
        for seq in sequences:
            key = f"{seq.id}_{start:06d}"
            if writer.is_done(key):
                continue
            writer.write(Clip(key=key, frames=encode_frames(rgb_uint8), c2w=c2w, fxfycxcy=fxfycxcy,
                              timestamps=t, meta=ClipMeta.for_dataset("re10k", seq.id), depth=depth, ...))

Shards are complete tar files (512-byte aligned, POSIX ustar, mtime 0) readable by `tar`, `webdataset` and our
`datamodules.stream` pipeline.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import os
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datamodules.spec import SPEC_VERSION, Clip, encode_clip

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


@dataclass
class ShardInfo:
    """One finished shard as listed in the manifest."""

    name: str
    split: str
    clips: int
    frames: int
    bytes: int
    keys: list[str] = field(default_factory=list)
    datasets: dict[str, int] = field(default_factory=dict)


def read_manifest(out_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a shard folder (an empty one when none exists yet)."""
    path = Path(out_dir) / MANIFEST
    if not path.exists():
        return {"spec_version": SPEC_VERSION, "sources": [], "shards": [], "splits": {}}
    return json.loads(path.read_text())


def _summarise(manifest: dict[str, Any]) -> None:
    splits: dict[str, dict[str, Any]] = {}
    for s in manifest["shards"]:
        d = splits.setdefault(s["split"], {"shards": 0, "clips": 0, "frames": 0, "bytes": 0, "datasets": {}})
        d["shards"] += 1
        d["clips"] += s["clips"]
        d["frames"] += s["frames"]
        d["bytes"] += s["bytes"]
        for k, v in s["datasets"].items():
            d["datasets"][k] = d["datasets"].get(k, 0) + v
    manifest["splits"] = splits


@contextlib.contextmanager
def _locked(out_dir: Path):
    with open(out_dir / f".{MANIFEST}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class ShardWriter:
    """Write validated clips to `out_dir/{split}-{index:06d}.tar`, atomically and resumably.

    Args:
        out_dir: output folder (created). One manifest per folder; several writers (different splits or parts) may
            share it: the manifest is updated under a file lock.
        source: free-form description of where the clips come from (converter, native path, version).
        split: shard name prefix, e.g. "train" / "val" / "test".
        maxcount: clips per shard at most.
        maxsize: bytes per shard at most (a single clip larger than this gets a shard of its own).
        part: set when several processes write the same split at once (each its own part number).
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        *,
        source: str,
        split: str = "train",
        maxcount: int = 100,
        maxsize: int = 1 << 30,
        part: int | None = None,
    ):
        if maxcount < 1 or maxsize < 1:
            raise ValueError(f"maxcount and maxsize must be >= 1, got {maxcount}, {maxsize}")
        if not split.replace("_", "").isalnum():
            raise ValueError(f"split must be alphanumeric, got {split!r}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.source, self.split, self.maxcount, self.maxsize = source, split, maxcount, maxsize
        self.prefix = split if part is None else f"{split}-p{part:03d}"
        manifest = read_manifest(self.out_dir)
        if manifest["spec_version"] != SPEC_VERSION:
            raise ValueError(f"{self.out_dir / MANIFEST}: spec version {manifest['spec_version']} != {SPEC_VERSION}")
        mine = [
            s
            for s in manifest["shards"]
            if s["name"].startswith(self.prefix + "-") and self._index(s["name"]) is not None
        ]
        self.done_keys: set[str] = {k for s in mine for k in s["keys"]}
        self.next_index = max((self._index(s["name"]) for s in mine), default=-1) + 1
        for stale in self.out_dir.glob(f".{self.prefix}-*.tar.tmp*"):
            log.info("removing unfinished shard %s", stale)
            stale.unlink()
        self.written_clips = 0
        self.written_shards: list[str] = []
        self._tar: tarfile.TarFile | None = None
        self._tmp: Path | None = None
        self._info: ShardInfo | None = None

    def _index(self, name: str) -> int | None:
        stem = name.removesuffix(".tar")
        rest = stem[len(self.prefix) + 1 :]
        return int(rest) if rest.isdigit() else None

    def shard_name(self, index: int) -> str:
        """Deterministic shard file name for a shard index."""
        return f"{self.prefix}-{index:06d}.tar"

    def is_done(self, key: str) -> bool:
        """True if a clip with this key is already in a finished shard (from an earlier run)."""
        return key in self.done_keys

    def write(self, clip: Clip) -> bool:
        """Validate and append a clip. Returns False (and writes nothing) if its key is already done.

        Raises `SpecError` naming the key and field if the clip violates the schema (nothing is written then). A write
        that fails (e.g. a full disk) drops the open shard, whose clips are then not done, and re-raises.
        """
        if clip.key in self.done_keys:
            return False
        members = encode_clip(clip)
        size = sum(512 + (len(v) + 511) // 512 * 512 for v in members.values())
        if self._tar is not None and (
            self._info.clips >= self.maxcount or self._info.bytes + size > self.maxsize  # type: ignore[union-attr]
        ):
            self._finish()
        if self._tar is None:
            self._open()
        try:
            for suffix, data in members.items():
                ti = tarfile.TarInfo(f"{clip.key}.{suffix}")
                ti.size, ti.mtime, ti.mode, ti.uname, ti.gname = len(data), 0, 0o644, "", ""
                self._tar.addfile(ti, io.BytesIO(data))  # type: ignore[union-attr]
        except BaseException:  # a failed write (full disk) leaves a partial member: drop the whole open shard
            self.abort()
            raise
        info = self._info
        info.clips += 1  # type: ignore[union-attr]
        info.frames += clip.num_frames  # type: ignore[union-attr]
        info.bytes += size  # type: ignore[union-attr]
        info.keys.append(clip.key)  # type: ignore[union-attr]
        info.datasets[clip.meta.dataset] = info.datasets.get(clip.meta.dataset, 0) + 1  # type: ignore[union-attr]
        self.done_keys.add(clip.key)
        self.written_clips += 1
        return True

    def _open(self) -> None:
        name = self.shard_name(self.next_index)
        self._tmp = self.out_dir / f".{name}.tmp{os.getpid()}"
        self._tar = tarfile.open(self._tmp, "w", format=tarfile.USTAR_FORMAT)
        self._info = ShardInfo(name=name, split=self.split, clips=0, frames=0, bytes=0)

    def _finish(self) -> None:
        assert self._tar is not None and self._tmp is not None and self._info is not None
        try:
            self._tar.close()
            with open(self._tmp, "rb+") as f:
                os.fsync(f.fileno())
        except BaseException:  # e.g. a full disk while writing the end of the archive: drop the shard
            self._tar = None
            self.abort()
            raise
        info = self._info
        info.bytes = self._tmp.stat().st_size
        os.replace(self._tmp, self.out_dir / info.name)
        self._update_manifest(info)
        self.written_shards.append(info.name)
        self.next_index += 1
        self._tar = self._tmp = self._info = None

    def _update_manifest(self, info: ShardInfo) -> None:
        with _locked(self.out_dir):
            manifest = read_manifest(self.out_dir)
            manifest["shards"] = [s for s in manifest["shards"] if s["name"] != info.name] + [info.__dict__]
            manifest["shards"].sort(key=lambda s: s["name"])
            if self.source not in manifest["sources"]:
                manifest["sources"].append(self.source)
            manifest["spec_version"] = SPEC_VERSION
            manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            _summarise(manifest)
            tmp = self.out_dir / f".{MANIFEST}.tmp{os.getpid()}"
            try:
                tmp.write_text(json.dumps(manifest, indent=1))
                os.replace(tmp, self.out_dir / MANIFEST)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise

    def close(self) -> None:
        """Finish the open shard (if it holds any clip)."""
        if self._tar is not None:
            if self._info is not None and self._info.clips > 0:
                self._finish()
            else:
                self._tar.close()
                self._tmp.unlink()  # type: ignore[union-attr]
                self._tar = self._tmp = self._info = None

    def abort(self) -> None:
        """Drop the open shard without finishing it (used when the converter fails mid-shard, or the disk is full)."""
        tar, tmp, info = self._tar, self._tmp, self._info
        self._tar = self._tmp = self._info = None
        if info is not None:  # its clips are not written: a later write() of them (or a rerun) writes them again
            self.done_keys.difference_update(info.keys)
            self.written_clips -= info.clips
        try:
            if tar is not None:
                tar.close()  # may fail again on a full disk: the file is deleted all the same
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # On an exception the open shard is dropped, so a rerun rewrites exactly those clips.
        if exc_type is None:
            self.close()
        else:
            self.abort()
