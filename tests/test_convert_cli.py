"""`python -m datamodules.convert`: strict arguments, registry, resumable runs, parallel parts, bad sequences."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from datamodules import convert
from datamodules.spec import decode_sample
from datamodules.write import read_manifest
from tests.native.re10k import write_clip
from tests.native.scene import make_scene

ROOT = Path(__file__).resolve().parents[1]
CLIPS = ["00000000000000a0", "00000000000000b1", "00000000000000c2"]


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    """Three RealEstate10K clips of 6 frames (png folders) and one whose pose file has a NaN."""
    root = tmp_path_factory.mktemp("re10k")
    for i, clip in enumerate(CLIPS):
        write_clip(root, make_scene(num_frames=6, height=24, width=32, dynamic=False, seed=i), clip=clip)
    bad = write_clip(
        root, make_scene(num_frames=6, height=24, width=32, dynamic=False, seed=9), clip="ffffffffffffffff"
    )
    lines = bad.read_text().splitlines()
    lines[2] = lines[2].replace(lines[2].split()[9], "nan", 1)
    bad.write_text("\n".join(lines) + "\n")
    return root


def _run(*args: str):
    cli, opts, module = convert.parse_args(list(args))
    return convert.run(cli, opts, module, progress=False)


def _keys(out: Path) -> list[str]:
    return sorted(k for s in read_manifest(out)["shards"] for k in s["keys"])


def test_strict_arguments(tmp_path, native, monkeypatch):
    with pytest.raises(convert.UsageError, match=r"unknown key\(s\) clip_len; valid keys: source, in, out"):
        convert.parse_args(["source=re10k", f"in={native}", f"out={tmp_path}", "clip_len=4"])
    with pytest.raises(convert.UsageError, match="unknown source 'kitti'; known sources: re10k, tartanair"):
        convert.parse_args(["source=kitti", f"in={native}", f"out={tmp_path}"])
    monkeypatch.setattr(convert, "SOURCES", (*convert.SOURCES, "notwritten"))
    with pytest.raises(convert.UsageError, match="no converter yet"):
        convert.parse_args(["source=notwritten", f"in={native}", f"out={tmp_path}"])
    with pytest.raises(convert.UsageError, match="clip_length='x': expected an integer"):
        convert.parse_args(["source=re10k", f"in={native}", f"out={tmp_path}", "clip_length=x"])
    with pytest.raises(convert.UsageError, match="camera='up': expected one of left, right, both"):
        convert.parse_args(["source=tartanair", f"in={native}", f"out={tmp_path}", "camera=up"])
    with pytest.raises(convert.UsageError, match="not a directory"):
        convert.parse_args(["source=re10k", f"in={tmp_path / 'nope'}", f"out={tmp_path}"])
    cli, opts, module = convert.parse_args(
        ["source=tartanair", f"in={native}", f"out={tmp_path}", "camera=both", "flow=false", "stride=2", "workers=3"]
    )
    assert module.NAME == "tartanair" and cli["workers"] == 3 and opts.stride == 2
    assert opts.source_options == {"camera": "both", "flow": False, "sky_depth": 1000.0}


def test_bad_sequence_is_reported_and_the_rest_converts(tmp_path, native):
    s = _run("source=re10k", f"in={native}", f"out={tmp_path}", "clip_length=4", "clip_step=2", "maxcount=2")
    assert (s.sequences, s.converted, s.clips, s.frames) == (4, 3, 6, 24)
    assert list(s.failed) == ["ffffffffffffffff"]
    assert "ffffffffffffffff.txt" in s.failed["ffffffffffffffff"] and "non-finite pose" in s.failed["ffffffffffffffff"]
    assert s.exit_code == 0
    keys = _keys(tmp_path)
    assert keys == sorted(f"{c}_{i:06d}" for c in CLIPS for i in (0, 2))  # 6 frames: windows 0-3 and 2-5
    m = read_manifest(tmp_path)
    assert [sh["name"] for sh in m["shards"]] == [f"train-{i:06d}.tar" for i in range(3)]
    assert m["splits"]["train"]["clips"] == 6 and m["splits"]["train"]["frames"] == 24

    samples = list(wds.WebDataset(str(tmp_path / "train-000000.tar"), shardshuffle=False))
    clip = decode_sample(samples[0])
    assert clip.key == f"{CLIPS[0]}_000000" and clip.num_frames == 4 and clip.meta.dataset == "re10k"


def test_rerun_is_resumable_and_workers_share_the_manifest(tmp_path, native):
    args = ("source=re10k", f"in={native}", f"out={tmp_path}", "clip_length=3", "sequences=0*")
    first = _run(*args, "workers=2")
    assert (first.sequences, first.converted, first.clips) == (3, 3, 6)
    names = sorted(p.name for p in tmp_path.glob("*.tar"))
    assert all(n.startswith(("train-p000-", "train-p001-")) for n in names)
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.glob("*.tar")}
    manifest = (tmp_path / "manifest.json").read_bytes()
    assert _keys(tmp_path) == sorted(f"{c}_{i:06d}" for c in CLIPS for i in (0, 3))

    for workers in ("1", "2"):
        again = _run(*args, f"workers={workers}")
        assert (again.converted, again.clips, again.clips_before, again.clips_in_manifest) == (3, 0, 6, 6)
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.glob("*.tar")} == before
    assert (tmp_path / "manifest.json").read_bytes() == manifest

    # a lost shard is redone on the next run (its keys leave the manifest with it)
    m = json.loads(manifest)
    lost = m["shards"].pop(0)
    (tmp_path / lost["name"]).unlink()
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    redo = _run(*args)
    assert redo.clips == len(lost["keys"])
    assert _keys(tmp_path) == sorted(f"{c}_{i:06d}" for c in CLIPS for i in (0, 3))


def test_parallel_equals_serial(tmp_path, native):
    serial = _run("source=re10k", f"in={native}", f"out={tmp_path / 's'}", "frame_format=png", "max_sequences=3")
    parallel = _run("source=re10k", f"in={native}", f"out={tmp_path / 'p'}", "frame_format=png", "workers=2")
    assert (serial.clips, parallel.clips, parallel.converted, len(parallel.failed)) == (3, 3, 3, 1)

    def load(out):
        return {
            (c := decode_sample(s)).key: c
            for shard in sorted(out.glob("*.tar"))
            for s in wds.WebDataset(str(shard), shardshuffle=False)
        }

    a, b = load(tmp_path / "s"), load(tmp_path / "p")
    assert sorted(a) == sorted(b) == [f"{c}_000000" for c in CLIPS]
    for k in a:
        np.testing.assert_array_equal(a[k].c2w, b[k].c2w)
        assert a[k].frames == b[k].frames


def test_main_exit_codes_and_summary(tmp_path, native):
    def main(*args):
        r = subprocess.run(
            [sys.executable, "-m", "datamodules.convert", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        return r.returncode, r.stdout + r.stderr

    code, text = main("source=re10k", f"in={native}", f"out={tmp_path / 'a'}", "sequences=f*,00000000000000a0")
    assert code == 0, text
    assert "1/2 sequences converted, 1 clips (6 frames) written" in text
    assert "skipped ffffffffffffffff: bad input:" in text and "non-finite pose" in text
    code, text = main("source=re10k", f"in={native}", f"out={tmp_path / 'b'}", "sequences=f*")
    assert code == 1 and "0/1 sequences converted" in text
    code, text = main("source=re10k", f"in={native}", "out=x", "bogus=1")
    assert code == 2 and "unknown key(s) bogus" in text
