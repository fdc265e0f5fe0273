"""Validate every sample of shard files: `python -m datamodules.verify PATH [PATH ...] [--shallow]`.

PATH is a shard, a folder of shards (`*.tar`, recursively) or a glob. Every sample is decoded and checked with
`datamodules.spec.validate_clip(deep=True)` (frames decoded too, unless `--shallow`); unreadable shards and bad samples
are listed with the key and field, and the exit status is 1 if there is any. Manifest counts are compared as well.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

from datamodules.shards import SkipStats, iter_tar
from datamodules.spec import SpecError, decode_sample, validate_clip
from datamodules.write import MANIFEST


def find_shards(paths: list[str]) -> list[Path]:
    """Shard files of files, folders (recursive) and globs, sorted."""
    out: set[Path] = set()
    for p in paths:
        path = Path(p)
        if path.is_dir():
            out.update(path.rglob("*.tar"))
        elif path.exists():
            out.add(path)
        else:
            out.update(Path(g) for g in glob.glob(p))
    return sorted(out)


def verify(paths: list[str], deep: bool = True) -> dict:
    """{'shards', 'clips', 'frames', 'bad': [(shard, key, message)], 'datasets': {name: clips}}."""
    report: dict = {"shards": 0, "clips": 0, "frames": 0, "bad": [], "datasets": {}}
    counts: dict[Path, int] = {}
    for shard in find_shards(paths):
        report["shards"] += 1
        stats = SkipStats()
        n = 0
        for sample in iter_tar(str(shard), stats):
            try:
                clip = decode_sample(sample, validate=False)
                validate_clip(clip, deep=deep)
            except SpecError as e:
                report["bad"].append((str(shard), e.key, str(e)))
                continue
            except Exception as e:  # noqa: BLE001 - anything else that breaks a sample is reported the same way
                report["bad"].append((str(shard), str(sample.get("__key__")), f"{type(e).__name__}: {e}"))
                continue
            n += 1
            report["frames"] += clip.num_frames
            report["datasets"][clip.meta.dataset] = report["datasets"].get(clip.meta.dataset, 0) + 1
        if stats.shard_errors:
            report["bad"].append((str(shard), "-", "; ".join(stats.reasons)))
        report["clips"] += n
        counts[shard] = n
    for manifest in {s.parent / MANIFEST for s in counts}:
        if manifest.exists():
            for entry in json.loads(manifest.read_text())["shards"]:
                shard = manifest.parent / entry["name"]
                if shard in counts and counts[shard] != entry["clips"]:
                    report["bad"].append(
                        (str(shard), "-", f"manifest lists {entry['clips']} clips, {counts[shard]} valid")
                    )
                elif shard not in counts and not shard.exists():
                    report["bad"].append((str(shard), "-", "listed in the manifest but missing"))
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+")
    p.add_argument("--shallow", action="store_true", help="do not decode frames")
    args = p.parse_args(argv)
    r = verify(args.paths, deep=not args.shallow)
    print(f"{r['shards']} shards, {r['clips']} valid clips, {r['frames']} frames; datasets {r['datasets']}")
    for shard, key, msg in r["bad"]:
        print(f"BAD {shard} [{key}]: {msg}")
    if r["shards"] == 0:  # a path without shards is bad input (exit 2); bad clips found are a result (exit 1)
        print(f"error: no shards found in {args.paths}", file=sys.stderr)
        return 2
    print("OK" if not r["bad"] else f"{len(r['bad'])} problems")
    return 1 if r["bad"] else 0


if __name__ == "__main__":
    sys.exit(main())
