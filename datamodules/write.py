"""Validated, atomic, resumable tar shard writing: `TarShardWriter` (any sample schema) and `ShardWriter` (clips).

A writer puts samples into tar shards named deterministically `{split}-{index:06d}.tar` (or
`{split}-p{part:03d}-{index:06d}.tar` for parallel writers of one split), each written under a temporary name and
renamed when complete (`diff4splat.files`), and keeps `manifest.json` in the output folder up to date (finished
shards, their sample keys, counts, spec version, source). Every sample is validated before it is written, so a shard
never holds a sample that readers would reject. Clip shards (`ShardWriter`) and latent shards
(`datamodules.latents.LatentShardWriter`) differ only in their sample schema, spec version and manifest counts.

Resuming: a writer that is killed and rerun opens the same folder again. Finished shards are kept (the manifest lists
their keys), unfinished temporary files are deleted, and `write()` of a sample whose key is already in a finished shard
is a no-op that returns False. Check `writer.is_done(key)` before doing expensive loading. A shard is finished as soon
as it is full, so a later failure cannot drop it.

Usage (a converter):

    from datamodules.frame_codec import encode_frames
    from datamodules.spec import Clip, ClipMeta
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
shard reader (`datamodules.shards`).
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
from pathlib import Path
from typing import Any, ClassVar, Self

from datamodules.spec import SPEC_VERSION, Clip, encode_clip
from diff4splat.files import atomic_write_text, fsync_tree, remove_path, replace_path

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def read_manifest(out_dir: str | os.PathLike, spec_version: str = SPEC_VERSION) -> dict[str, Any]:
    """The manifest of a shard folder (an empty one of ``spec_version`` when none exists yet)."""
    path = Path(out_dir) / MANIFEST
    if not path.exists():
        return {"spec_version": spec_version, "sources": [], "shards": [], "splits": {}}
    return json.loads(path.read_bytes())


@contextlib.contextmanager
def _locked(out_dir: Path):
    with open(out_dir / f".{MANIFEST}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class TarShardWriter:
    """Write validated samples (tar members `{key}.{suffix}`) to `out_dir/{prefix}-{index:06d}.tar`, atomically and
    resumably, listing every finished shard in `manifest.json`. Subclasses give the schema: `spec_version`,
    `counts` (the per-shard counters of the manifest, the first counting samples) and a `write(sample)` that calls
    `add`.

    Args:
        out_dir: output folder (created). One manifest per folder; several writers (different splits or parts) may
            share it: the manifest is updated under a file lock.
        source: free-form description of where the samples come from (converter, native path, version).
        split: shard name prefix, e.g. "train" / "val" / "test".
        maxcount: samples per shard at most.
        maxsize: bytes per shard at most (a single sample larger than this gets a shard of its own).
        part: set when several processes write the same split at once (each its own part number).
    """

    spec_version: ClassVar[str]
    counts: ClassVar[tuple[str, ...]]
    folder_hint: ClassVar[str] = ""  # appended to the spec-version mismatch error

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
        manifest = read_manifest(self.out_dir, self.spec_version)
        if manifest.get("spec_version") != self.spec_version:
            raise ValueError(
                f"{self.out_dir / MANIFEST}: spec version {manifest.get('spec_version')!r} is not "
                f"{self.spec_version!r}{self.folder_hint}"
            )
        mine = [s for s in manifest["shards"] if self._index(s["name"]) is not None]
        self.done_keys: set[str] = {k for s in mine for k in s["keys"]}
        self.next_index = max((self._index(s["name"]) for s in mine), default=-1) + 1
        for stale in self.out_dir.glob(f".{self.prefix}-*.tar.tmp*"):
            log.info("removing unfinished shard %s", stale)
            stale.unlink()
        self.written = 0  # samples written by this writer (in finished or open shards)
        self.written_shards: list[str] = []
        self._tar: tarfile.TarFile | None = None
        self._tmp: Path | None = None
        self._info: dict[str, Any] | None = None  # the open shard's manifest entry

    def _index(self, name: str) -> int | None:
        if not name.startswith(self.prefix + "-"):
            return None
        rest = name.removesuffix(".tar")[len(self.prefix) + 1 :]
        return int(rest) if rest.isdigit() else None

    def shard_name(self, index: int) -> str:
        """Deterministic shard file name for a shard index."""
        return f"{self.prefix}-{index:06d}.tar"

    def is_done(self, key: str) -> bool:
        """True if a sample with this key is already in a finished shard (from an earlier run) or written by this
        writer."""
        return key in self.done_keys

    def add(self, key: str, members: dict[str, bytes], dataset: str, **counts: int) -> bool:
        """Append one sample's validated members ({suffix: bytes}); `counts` adds to the manifest counters besides
        the sample count (e.g. frames). Returns False (and writes nothing) if the key is already done.

        A write that fails (e.g. a full disk) drops the open shard, whose samples are then not done, and re-raises.
        """
        if key in self.done_keys:
            return False
        size = sum(512 + (len(v) + 511) // 512 * 512 for v in members.values())
        if self._info is not None and self._info["bytes"] + size > self.maxsize:
            self._finish()
        if self._tar is None:
            self._open()
        try:
            for suffix, data in members.items():
                ti = tarfile.TarInfo(f"{key}.{suffix}")
                ti.size, ti.mtime, ti.mode, ti.uname, ti.gname = len(data), 0, 0o644, "", ""
                self._tar.addfile(ti, io.BytesIO(data))  # type: ignore[union-attr]
        except BaseException:  # a failed write (full disk) leaves a partial member: drop the whole open shard
            self.abort()
            raise
        info = self._info
        assert info is not None
        info[self.counts[0]] += 1
        for name, n in counts.items():
            info[name] += n
        info["bytes"] += size
        info["keys"].append(key)
        info["datasets"][dataset] = info["datasets"].get(dataset, 0) + 1
        self.done_keys.add(key)
        self.written += 1
        if info[self.counts[0]] >= self.maxcount:  # full: finish now, so that a later failure cannot drop it
            self._finish()
        return True

    def _open(self) -> None:
        name = self.shard_name(self.next_index)
        self._tmp = self.out_dir / f".{name}.tmp{os.getpid()}"
        self._tar = tarfile.open(self._tmp, "w", format=tarfile.USTAR_FORMAT)
        self._info = {"name": name, "split": self.split, **dict.fromkeys(self.counts, 0), "bytes": 0}
        self._info.update(keys=[], datasets={})

    def _finish(self) -> None:
        assert self._tar is not None and self._tmp is not None and self._info is not None
        try:
            self._tar.close()
            self._tar = None
            fsync_tree(self._tmp)
        except BaseException:  # e.g. a full disk while writing the end of the archive: drop the shard
            self.abort()
            raise
        info = self._info
        info["bytes"] = self._tmp.stat().st_size
        replace_path(self._tmp, self.out_dir / info["name"])
        self._tmp = self._info = None
        self._update_manifest(info)
        self.written_shards.append(info["name"])
        self.next_index += 1

    def _update_manifest(self, info: dict[str, Any]) -> None:
        with _locked(self.out_dir):
            manifest = read_manifest(self.out_dir, self.spec_version)
            manifest["shards"] = [s for s in manifest["shards"] if s["name"] != info["name"]] + [info]
            manifest["shards"].sort(key=lambda s: s["name"])
            if self.source not in manifest["sources"]:
                manifest["sources"].append(self.source)
            manifest["spec_version"] = self.spec_version
            manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            manifest["splits"] = self._summarise(manifest["shards"])
            atomic_write_text(self.out_dir / MANIFEST, json.dumps(manifest, indent=1))

    def _summarise(self, shards: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Per split: shards, the counters, bytes and samples per dataset."""
        splits: dict[str, dict[str, Any]] = {}
        for s in shards:
            d = splits.setdefault(
                s["split"], {"shards": 0, **dict.fromkeys(self.counts, 0), "bytes": 0, "datasets": {}}
            )
            d["shards"] += 1
            for name in (*self.counts, "bytes"):
                d[name] += s[name]
            for k, v in s["datasets"].items():
                d["datasets"][k] = d["datasets"].get(k, 0) + v
        return splits

    def close(self) -> None:
        """Finish the open shard (if it holds any sample)."""
        if self._info is not None and self._info[self.counts[0]] > 0:
            self._finish()
        else:
            self.abort()

    def abort(self) -> None:
        """Drop the open shard without finishing it (used when the writer's caller fails mid-shard, or the disk is
        full)."""
        tar, tmp, info = self._tar, self._tmp, self._info
        self._tar = self._tmp = self._info = None
        if info is not None:  # its samples are not written: a later write of them (or a rerun) writes them again
            self.done_keys.difference_update(info["keys"])
            self.written -= info[self.counts[0]]
        try:
            if tar is not None:
                tar.close()  # may fail again on a full disk: the file is deleted all the same
        finally:
            if tmp is not None:
                remove_path(tmp)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # On an exception the open shard is dropped, so a rerun rewrites exactly those samples.
        if exc_type is None:
            self.close()
        else:
            self.abort()


class ShardWriter(TarShardWriter):
    """Write validated `Clip`s to `out_dir/{split}-{index:06d}.tar` (see the module docstring and `TarShardWriter`).

    Manifest counters per shard and split: clips, frames, bytes, clips per dataset.
    """

    spec_version = SPEC_VERSION
    counts = ("clips", "frames")

    def write(self, clip: Clip) -> bool:
        """Validate and append a clip. Returns False (and writes nothing) if its key is already done.

        Raises `SpecError` naming the key and field if the clip violates the schema (nothing is written then).
        """
        if self.is_done(clip.key):
            return False
        return self.add(clip.key, encode_clip(clip), clip.meta.dataset, frames=clip.num_frames)
