"""The shard tools: `datamodules.verify` (bad samples, exit status) and `datamodules.inspect` (counts, sheet)."""

from __future__ import annotations

import io
import tarfile

import numpy as np
from PIL import Image
from test_stream import tiny_clip

from datamodules.inspect import main as inspect_main
from datamodules.inspect import summarise
from datamodules.spec import encode_clip
from datamodules.verify import main as verify_main
from datamodules.verify import verify
from datamodules.write import ShardWriter


def test_verify_reports_bad_samples_and_exit_status(tmp_path, capsys):
    with ShardWriter(tmp_path, source="test", maxcount=3) as w:
        for i in range(5):
            w.write(tiny_clip(f"ok{i}", seed=i))
    assert verify_main([str(tmp_path)]) == 0
    r = verify([str(tmp_path)])
    assert (r["shards"], r["clips"], r["frames"], r["bad"]) == (2, 5, 20, [])
    # a shard with a clip whose c2w is not a rigid pose
    members = encode_clip(tiny_clip("bad0", seed=9))
    c2w = np.tile(np.eye(4), (4, 1, 1))
    c2w[:, 0, 0] = 2.0
    buf = io.BytesIO()
    np.save(buf, c2w)
    members["c2w.npy"] = buf.getvalue()
    with tarfile.open(tmp_path / "extra-000000.tar", "w") as tf:
        for suffix, data in members.items():
            ti = tarfile.TarInfo(f"bad0.{suffix}")
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    capsys.readouterr()
    assert verify_main([str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "[bad0]" in out and "'c2w'" in out and "5 valid clips" in out


def test_inspect_counts_and_contact_sheet(tmp_path):
    with ShardWriter(tmp_path, source="test", maxcount=2) as w:
        for i in range(3):
            w.write(tiny_clip(f"po{i}", seed=i))
        w.write(tiny_clip("re0", dataset="re10k"))
    summary, clips = summarise([str(tmp_path)], max_clips=2)
    assert (summary["shards"], summary["clips"], summary["frames"]) == (2, 4, 16)
    assert summary["datasets"]["pointodyssey"]["clips"] == 3
    assert summary["datasets"]["re10k"]["static_share"] == 1.0
    assert summary["datasets"]["pointodyssey"]["tracks_per_clip"] == 3.0
    assert len(clips) == 2
    sheet = tmp_path / "sheet.png"
    assert inspect_main([str(tmp_path), "--clips", "2", "--out", str(sheet)]) == 0
    with Image.open(sheet) as im:
        assert im.height == 2 * (128 + 14) and im.width > 4 * 128
