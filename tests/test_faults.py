"""The fault suite: bad inputs through the public entry points (shard tools and the streaming reader, converters,
the CLIs, configs, weight files), each answered by an error that names the file, the field and the expected form, or
by a counted skip, and none leaving a partial output behind (output folders absent or unchanged, no temporary files).

Full disks are simulated by a file object that takes a byte budget and then fails every write with ENOSPC, placed
under the real writers (the shard writer's tar file, the .ply writer, the .npz writer, the results writer).
Checkpoint security (pickles that would run code) is in ``test_security.py``.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import shutil
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from test_stream import TINY, tiny_clip

from datamodules import convert
from datamodules.spec import SPEC_VERSION, SpecError, decode_sample, encode_clip, encode_video
from datamodules.stream import ClipStream, SkipStats, SourceConfig, iter_tar
from datamodules.verify import verify
from datamodules.write import ShardWriter, read_manifest
from diff4splat import evaluate, preprocess, reconstruct, view
from diff4splat.cli import InputError
from diff4splat.configs import to_plain
from diff4splat.gaussians import io as gaussian_io
from diff4splat.gaussians.io import load_ply, save_ply
from diff4splat.geometry.trajectories import make_trajectory, write_trajectory_json
from diff4splat.models.lrdm import LRDM, lrdm_preset

ROOT = Path(__file__).resolve().parents[1]
F, H, W = 5, 36, 44  # reconstruct inputs: not multiples of the patch size (cropped to 32 x 40)

torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------------- helpers


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden and temporary ones included) with its bytes: 'unchanged' means equal."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=a.dtype == object)
    return buf.getvalue()


def write_tar(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> Path:
    """A tar of (member name prefix, {suffix: bytes}) samples, members named ``<prefix>.<suffix>``."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        for prefix, members in samples:
            for suffix, data in members.items():
                ti = tarfile.TarInfo(f"{prefix}.{suffix}")
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    return path


class DiskBudget:
    """Bytes a simulated disk still takes, shared by every file opened through `opener` (thread-safe): the write
    that would pass the budget writes what fits and fails with ENOSPC, as do all later ones."""

    def __init__(self, budget: int) -> None:
        self.left, self.lock, self.failures = budget, threading.Lock(), 0

    def opener(self, real_open=open):
        budget = self

        class FullDiskFile:
            def __init__(self, f) -> None:
                self._f = f

            def write(self, data) -> int:
                data = memoryview(data).cast("B")
                with budget.lock:
                    take = max(0, min(len(data), budget.left))
                    budget.left -= take
                if take:
                    self._f.write(data[:take])
                if take < len(data):
                    budget.failures += 1
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return len(data)

            def __getattr__(self, name):
                return getattr(self._f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc) -> None:
                self._f.close()

        def open_(file, mode="r", *args, **kwargs):
            f = real_open(file, mode, *args, **kwargs)
            return FullDiskFile(f) if any(c in mode for c in "wax+") else f

        return open_


def assert_enospc(info: pytest.ExceptionInfo) -> None:
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC, info.value


# ---------------------------------------------------------------------------------------------------- shard samples
#
# One bad sample between good ones: `datamodules.verify` reports it with its key and field, and the streaming reader
# skips and counts it while every good clip still arrives.


def _set(name: str, value: np.ndarray):
    def mutate(key: str, m: dict[str, bytes]) -> tuple[str, dict[str, bytes]]:
        m[f"{name}.npy"] = npy(value)
        return key, m

    return mutate


def _nan_pose(key, m):
    c2w = np.tile(np.eye(4), (4, 1, 1))
    c2w[2, 1, 3] = np.nan
    m["c2w.npy"] = npy(c2w)
    return key, m


def _sheared_pose(key, m):
    c2w = np.tile(np.eye(4), (4, 1, 1))
    c2w[1, 0, 1] = 0.3  # a shear: not a rotation
    m["c2w.npy"] = npy(c2w)
    return key, m


def _drop(member: str):
    def mutate(key, m):
        del m[member]
        return key, m

    return mutate


def _meta(edit):
    def mutate(key, m):
        meta = json.loads(m["meta.json"])
        edit(meta)
        m["meta.json"] = json.dumps(meta).encode()
        return key, m

    return mutate


def _zero_frames(key, m):
    m = {k: v for k, v in m.items() if not k.endswith(".png")}
    m.update(
        {"c2w.npy": npy(np.zeros((0, 4, 4))), "fxfycxcy.npy": npy(np.zeros((0, 4))), "timestamps.npy": npy(np.zeros(0))}
    )
    return key, m


def _truncated_mp4(key, m):
    """The clip's frames as one H.264 mp4, cut in half (the moov atom at its end is lost)."""
    rgb = np.random.default_rng(0).integers(0, 255, (4, 16, 16, 3), dtype=np.uint8)
    m = {k: v for k, v in m.items() if not k.endswith(".png")}
    mp4 = encode_video(rgb)
    m["mp4"] = mp4[: len(mp4) // 2]
    meta = json.loads(m["meta.json"])
    meta.update(frame_format="mp4", height=16, width=16)
    m["meta.json"] = json.dumps(meta).encode()
    return key, m


def _traversal(prefix: str):
    def mutate(key, m):
        return prefix + key, m

    return mutate


SAMPLE_FAULTS = {
    "missing member": (_drop("c2w.npy"), "c2w", r"missing member c2w\.npy"),
    "wrong dtype": (_set("c2w", np.tile(np.eye(4, dtype=np.int64), (4, 1, 1))), "c2w", r"dtype must be of kind 'f'"),
    "wrong shape": (_set("fxfycxcy", np.ones((4, 3))), "fxfycxcy", r"shape must be \(4, 4\), got \(4, 3\)"),
    "NaN pose": (_nan_pose, "c2w", r"has non-finite values"),
    "non-orthonormal pose": (_sheared_pose, "c2w", r"rotation is not orthonormal"),
    "pickled npy": (_set("timestamps", np.array([{"x": 1}] * 4, dtype=object)), "timestamps", r"not a loadable \.npy"),
    "bool tracks_visible as float": (
        _set("tracks_visible", np.ones((4, 3), np.float32)),
        "tracks_visible",
        r"dtype must be of kind 'b'",
    ),
    "misspelt meta key": (
        _meta(lambda d: d.update(is_statc=d.pop("is_static"))),
        "meta",
        r"unknown keys \['is_statc'\]",
    ),
    "wrong meta version": (
        _meta(lambda d: d.update(spec_version="0.1")),
        "meta.spec_version",
        rf"'0\.1' != '{SPEC_VERSION}'",
    ),
    "zero frames": (_zero_frames, "frames", r"no frame members"),
    "truncated mp4": (_truncated_mp4, "frames", r"mp4 does not decode"),
    "path traversal": (_traversal("../../"), "key", r"a flat member name: no folders, dots or path traversal"),
    "absolute path": (_traversal("/tmp/"), "key", r"a flat member name"),
}


@pytest.mark.parametrize("fault", list(SAMPLE_FAULTS))
def test_bad_sample_is_reported_by_verify_and_skipped_by_the_stream(tmp_path, fault):
    mutate, field, message = SAMPLE_FAULTS[fault]
    samples = [(f"good{i}", encode_clip(tiny_clip(f"good{i}", seed=i))) for i in range(3)]
    bad_key, bad = mutate("bad0", encode_clip(tiny_clip("bad0", seed=7)))
    samples.insert(1, (bad_key, bad))
    shard = write_tar(tmp_path / "val-000000.tar", samples)
    before = snapshot(tmp_path)

    report = verify([str(shard)])
    assert report["clips"] == 3 and len(report["bad"]) == 1, report["bad"]
    _, key, text = report["bad"][0]
    assert key == bad_key.lstrip("./") or key == bad_key or key == os.path.normpath(bad_key)
    assert f"field {field!r}" in text and key in text, text
    assert re.search(message, text), text

    src = SourceConfig("pointodyssey", "unused", val_shards=str(shard), max_gap=4)
    stream = ClipStream([src], TINY, batch_size=1, batches_per_epoch=3, train=False, max_skip_rate=0.5)
    keys = [b["key"][0] for b in stream]
    assert keys == ["pointodyssey/good0", "pointodyssey/good1", "pointodyssey/good2"]
    assert (stream.stats.good, stream.stats.skipped, stream.stats.shard_errors) == (3, 1, 0)
    assert len(stream.stats.reasons) == 1 and key in stream.stats.reasons[0], stream.stats.reasons
    assert snapshot(tmp_path) == before  # the readers write nothing


def test_path_traversal_member_names_never_become_keys_of_good_clips(tmp_path):
    """A member name that climbs out of the shard keeps its folder part in the key (as in WebDataset), so it is
    refused by the key pattern instead of passing as ``escape_000000`` (what a basename would give)."""
    members = encode_clip(tiny_clip("escape_000000", seed=1))
    shard = write_tar(tmp_path / "t.tar", [("../../escape_000000", members), ("./fine_000000", members)])
    stats = SkipStats()
    keys = [s["__key__"] for s in iter_tar(str(shard), stats)]
    assert keys == ["../../escape_000000", "fine_000000"]  # "./x" is normalised; "../" stays and is refused
    with pytest.raises(SpecError, match=r"sample '\.\./\.\./escape_000000', field 'key'"):
        decode_sample(next(iter_tar(str(shard), stats)))


# ---------------------------------------------------------------------------------------------------- whole shards


def _two_shards(folder: Path) -> list[Path]:
    with ShardWriter(folder, source="faults", split="val", maxcount=3) as w:
        for i in range(6):
            w.write(tiny_clip(f"c{i}", seed=i))
    return sorted(folder.glob("val-*.tar"))


def _truncate(path: Path) -> str:
    with tarfile.open(path) as tf:
        cut = next(m for m in tf.getmembers() if m.name == "c4.c2w.npy").offset_data + 10
    with open(path, "r+b") as f:
        f.truncate(cut)
    return "truncated"


@pytest.mark.parametrize(
    ("damage", "good", "reason"),
    [
        (_truncate, 4, r"shard .*val-000001\.tar: ReadError: unexpected end of data"),
        (lambda p: p.write_bytes(np.random.default_rng(0).bytes(20000)), 3, r"shard .*val-000001\.tar: ReadError"),
        (lambda p: p.write_bytes(b""), 3, r"shard .*val-000001\.tar: ReadError: empty file"),
    ],
    ids=["truncated shard", "corrupt shard", "empty shard"],
)
def test_broken_shard_is_reported_and_counted(tmp_path, damage, good, reason):
    shards = _two_shards(tmp_path)
    damage(shards[1])
    report = verify([str(tmp_path)])
    assert report["clips"] == good
    problems = [m for _, _, m in report["bad"]]
    assert any(re.search(reason, m) for m in problems), problems
    assert f"manifest lists 3 clips, {good - 3} valid" in " ".join(problems)  # the manifest no longer matches

    src = SourceConfig("pointodyssey", "unused", val_shards=str(tmp_path / "val-*.tar"), max_gap=4)
    stream = ClipStream([src], TINY, batch_size=1, batches_per_epoch=good + 1, train=False, max_skip_rate=0.5)
    keys = [b["key"][0].split("/")[1] for b in stream]
    assert keys == [f"c{i}" for i in range(good)] + ["c0"]  # every readable clip, then the slice again from the start
    assert stream.stats.shard_errors == 1 and re.search(reason, stream.stats.reasons[0]), stream.stats.reasons
    assert stream.stats.skipped == (1 if good == 4 else 0)  # the clip cut in half is dropped and counted


def test_skip_rate_over_the_threshold_stops_training(tmp_path):
    from datamodules.stream import DataSkipRateError

    samples = [(f"b{i}", {**encode_clip(tiny_clip(f"b{i}", seed=i)), "meta.json": b"{broken"}) for i in range(4)]
    samples.append(("ok0", encode_clip(tiny_clip("ok0"))))
    write_tar(tmp_path / "train-000000.tar", samples)
    src = SourceConfig("pointodyssey", str(tmp_path / "train-*.tar"), max_gap=4)
    stream = ClipStream(
        [src], TINY, batch_size=2, batches_per_epoch=10, max_skip_rate=0.2, skip_rate_min_samples=10, shuffle_buffer=1
    )
    with pytest.raises(DataSkipRateError, match=r"skipped \d+ of \d+ samples \(\d+\.\d% > max_skip_rate 20\.0%\)"):
        list(stream)


def test_negative_and_zero_depth(tmp_path):
    """Refused at write time when marked valid, reported by verify in a foreign shard, and never used as valid depth
    by the stream when the clip has no validity mask."""
    clip = tiny_clip("d0", seed=1)
    clip.depth[:, :, :4] = -1.0
    clip.depth[:, :, 4:8] = 0.0
    clip.depth_valid = np.ones_like(clip.depth, dtype=bool)
    out = tmp_path / "shards"
    with pytest.raises(SpecError, match=r"sample 'd0', field 'depth_valid': marks pixels whose depth is not finite"):
        with ShardWriter(out, source="faults", split="val") as w:
            w.write(clip)
    assert snapshot(out) == {}  # no shard, no temporary file, no manifest

    members = encode_clip(tiny_clip("d0", seed=1))
    members["depth.npy"] = npy(clip.depth)
    members["depth_valid.npy"] = npy(clip.depth_valid)
    write_tar(tmp_path / "val-000000.tar", [("d0", members)])
    bad = verify([str(tmp_path / "val-000000.tar")])["bad"]
    assert len(bad) == 1 and "field 'depth_valid'" in bad[0][2]

    del members["depth_valid.npy"]  # no mask: validity is "finite and > 0"
    write_tar(tmp_path / "val-000000.tar", [("d0", members)])
    src = SourceConfig("pointodyssey", "unused", val_shards=str(tmp_path / "val-000000.tar"), max_gap=4)
    batch = next(iter(ClipStream([src], TINY, batch_size=1, batches_per_epoch=1, train=False)))
    valid = batch["depth_valid"][0]
    assert valid.shape[-2:] == (16, 16)
    assert not valid[..., :8].any() and valid[..., 8:].all()  # the 8 columns of depth <= 0 are invalid, the rest not
    assert (batch["depth"][0][..., :8] == 0).all() and (batch["depth"][0][..., 8:] > 0).all()


@pytest.mark.parametrize("when", ["mid-clip", "closing the shard"])
def test_full_disk_while_writing_a_shard_leaves_nothing(tmp_path, monkeypatch, when):
    out = tmp_path / "shards"
    with ShardWriter(out, source="faults", split="train", maxcount=2) as w:  # one finished shard from earlier
        for i in range(2):
            w.write(tiny_clip(f"old{i}", seed=i))
    before = snapshot(out)
    shard_bytes = len(before["train-000000.tar"])
    budget = DiskBudget(shard_bytes // 3 if when == "mid-clip" else shard_bytes - 1024)
    monkeypatch.setattr(tarfile, "bltn_open", budget.opener())
    with pytest.raises(OSError) as info:
        with ShardWriter(out, source="faults", split="train", maxcount=2) as w:
            for i in range(2):
                w.write(tiny_clip(f"new{i}", seed=10 + i))
            assert when == "closing the shard"  # mid-clip fails inside write()
    assert_enospc(info)
    assert budget.failures >= 1
    assert snapshot(out) == before  # no new shard, no temporary file, the manifest as it was
    monkeypatch.undo()
    with ShardWriter(out, source="faults", split="train", maxcount=2) as w:  # a rerun writes the lost clips
        assert not w.is_done("new0") and w.write(tiny_clip("new0", seed=10))
    assert sorted(k for s in read_manifest(out)["shards"] for k in s["keys"]) == ["new0", "old0", "old1"]


def test_a_failed_write_does_not_corrupt_later_clips(tmp_path, monkeypatch):
    """After a write fails mid-member the open shard is dropped: later clips go to a fresh, readable shard."""
    out = tmp_path / "shards"
    real = tarfile.copyfileobj
    calls = {"n": 0}

    def flaky_copy(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, **kwargs)

    monkeypatch.setattr(tarfile, "copyfileobj", flaky_copy)
    with ShardWriter(out, source="faults", split="train", maxcount=10) as w:
        with pytest.raises(OSError):
            w.write(tiny_clip("lost", seed=1))
        assert not w.is_done("lost")
        w.write(tiny_clip("after", seed=2))
    r = verify([str(out)])
    assert (r["clips"], r["bad"]) == (1, [])
    assert [k for s in read_manifest(out)["shards"] for k in s["keys"]] == ["after"]


# ---------------------------------------------------------------------------------------------------- converters


@pytest.fixture
def re10k_native(real_fixtures, tmp_path) -> tuple[Path, str]:
    """One real RealEstate10K clip (pose file + mp4) in the CameraCtrl layout, copied so a test can break it."""
    clip = "0bf152ef84195293"
    root = tmp_path / "native"
    for sub, ext in (("pose_files", "txt"), ("videos", "mp4")):
        (root / sub).mkdir(parents=True)
        shutil.copy(real_fixtures / "re10k" / sub / f"{clip}.{ext}", root / sub)
    return root, clip


def _convert(root: Path, out: Path, *extra: str) -> convert.Summary:
    cli, opts, module = convert.parse_args(["source=re10k", f"in={root}", f"out={out}", "max_side=64", *extra])
    return convert.run(cli, opts, module, progress=False)


def test_converter_truncated_mp4_fails_the_sequence_and_writes_nothing(re10k_native, tmp_path):
    root, clip = re10k_native
    video = root / "videos" / f"{clip}.mp4"
    video.write_bytes(video.read_bytes()[:50_000])
    out = tmp_path / "out" / "re10k"
    summary = _convert(root, out)
    assert (summary.converted, summary.clips, summary.exit_code) == (0, 0, 1)
    assert summary.failed[clip].startswith(f"bad input: {video}: video does not decode")
    assert not (tmp_path / "out").exists()  # no empty output folder either


def test_converter_non_orthonormal_pose_names_file_and_frame(re10k_native, real_fixtures, tmp_path):
    root, clip = re10k_native
    poses = root / "pose_files" / f"{clip}.txt"
    lines = poses.read_text().splitlines()
    cols = lines[4].split()
    cols[7] = str(2 * float(cols[7]))  # R[0,0] of row 3 doubled: not a rotation
    lines[4] = " ".join(cols)
    poses.write_text("\n".join(lines) + "\n")
    summary = _convert(root, tmp_path / "out")
    assert summary.failed[clip].startswith(f"bad input: {poses}: rotation of frame 3 is not orthonormal")
    assert not (tmp_path / "out").exists()
    shutil.copy(real_fixtures / "re10k" / "pose_files" / f"{clip}.txt", poses)
    assert _convert(root, tmp_path / "out", "max_clips=1", "clip_length=4").clips == 1  # control: the original works


def test_converter_misspelt_key_is_a_usage_error(tmp_path, capsys):
    out = tmp_path / "out"
    (tmp_path / "in").mkdir()
    assert convert.main(["source=re10k", f"in={tmp_path / 'in'}", f"out={out}", "clip_lenght=5"]) == 2
    err = capsys.readouterr().err
    assert "unknown key(s) clip_lenght; valid keys:" in err and "clip_length" in err
    assert not out.exists()


# ---------------------------------------------------------------------------------------------------- reconstruct


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """A tiny LRDM export, F frames (png folder) and their trajectory, and broken variants of each."""
    d = tmp_path_factory.mktemp("inputs")
    torch.manual_seed(0)
    cfg = lrdm_preset("tiny", dim=48, depth=2, num_heads=4, decoder_channels=8)
    state = {k: v.contiguous() for k, v in LRDM(cfg).state_dict().items()}
    meta = {"hparams": json.dumps({"model": to_plain(cfg)})}
    save_file(state, str(d / "lrdm.safetensors"), metadata=meta)
    raw = (d / "lrdm.safetensors").read_bytes()
    (d / "truncated.safetensors").write_bytes(raw[: len(raw) // 2])
    save_file({**state, "pose_token": torch.zeros(7)}, str(d / "misshaped.safetensors"), metadata=meta)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (F, H, W, 3), dtype=np.uint8)
    (d / "frames").mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(d / "frames" / f"{i:03d}.png")
    traj = make_trajectory("orbit", F, strength=0.3)
    write_trajectory_json(traj, d / "cams.json")
    (d / "zero.json").write_text('{"format": "diff4splat-trajectory", "version": 1, "frames": []}')
    c2w, fx = traj.c2w.numpy(), traj.fxfycxcy.numpy()
    images = frames.transpose(0, 3, 1, 2)
    nan = c2w.copy()
    nan[2, 0, 3] = np.nan
    sheared = c2w.copy()
    sheared[1, :3, :3] *= 1.5  # a scaled rotation
    np.savez(d / "nan.npz", images=images, C2W=nan, fxfycxcy=fx)
    np.savez(d / "sheared.npz", images=images, C2W=sheared, fxfycxcy=fx)
    np.savez(d / "strings.npz", images=images, C2W=np.full((F, 4, 4), "x"), fxfycxcy=fx)
    np.savez(d / "pickled.npz", images=np.array([{"payload": 1}] * F, dtype=object), C2W=c2w, fxfycxcy=fx)
    np.savez(d / "short.npz", images=images[:3], C2W=c2w, fxfycxcy=fx)
    mp4 = encode_video(np.ascontiguousarray(frames[:, :32, :40]))
    (d / "truncated.mp4").write_bytes(mp4[: len(mp4) // 2])
    return {p.name: p for p in d.iterdir()}


def fill(arg: str, paths: dict[str, Path]) -> str:
    """``{name}`` -> the path of that name (names hold dots, so not str.format)."""
    for name, path in paths.items():
        arg = arg.replace("{" + name + "}", str(path))
    return arg


def cli_error(main, argv: list[str], capsys) -> str:
    """Run a CLI's ``main``; it must exit with code 2 and one ``error:`` line; returns that line."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--input", "{nan.npz}"],
            r"nan\.npz: field C2W, frame 2: non-finite values \(NaN or inf\); expected a finite",
        ),
        (
            ["--input", "{sheared.npz}"],
            r"sheared\.npz: field C2W, frame 1: not a rigid pose .*expected \[R t; 0 0 0 1\]",
        ),
        (["--input", "{strings.npz}"], r"strings\.npz: field C2W has dtype <U1; expected numbers"),
        (
            ["--input", "{pickled.npz}"],
            r"pickled\.npz: field images is not a plain numeric array \(Object arrays cannot "
            r"be loaded when allow_pickle=False\)",
        ),
        (["--input", "{short.npz}"], r"short\.npz: field images has 3 frames but C2W has 5 cameras"),
        (["--input", "{truncated.mp4}", "--cameras", "{cams.json}"], r"truncated\.mp4: cannot decode video"),
        (["--input", "{frames}", "--cameras", "{zero.json}"], r"zero\.json\): field 'frames' must be a non-empty list"),
        (
            ["--input", "{frames}", "--cameras", "{cams.json}", "--weights", "{truncated.safetensors}"],
            r"LRDM weights: .*truncated\.safetensors: not a readable \.safetensors file \(SafetensorError",
        ),
        (
            ["--input", "{frames}", "--cameras", "{cams.json}", "--weights", "{misshaped.safetensors}"],
            r"misshaped\.safetensors: the weights do not match the model \(LRDM\): shape mismatches: pose_token \(7,\) "
            r"\(model \(48,\)\)",
        ),
    ],
    ids=[
        "NaN pose",
        "non-orthonormal pose",
        "wrong dtype",
        "pickled array",
        "frame count",
        "truncated mp4",
        "zero-frame trajectory",
        "truncated weights",
        "mis-shaped weights",
    ],
)
def test_reconstruct_bad_input(tmp_path, inputs, capsys, args, message):
    argv = [
        "--weights",
        str(inputs["lrdm.safetensors"]),
        *args,
        "--out",
        str(tmp_path / "o" / "out"),
        "--device",
        "cpu",
    ]
    argv = [fill(a, inputs) for a in argv]
    err = cli_error(reconstruct.main, argv, capsys)
    assert re.search(message, err), err
    assert list(tmp_path.iterdir()) == []  # no output folder, no temporary folder


def test_reconstruct_full_disk_while_exporting_leaves_no_folder(tmp_path, inputs, monkeypatch, capsys):
    out = tmp_path / "runs" / "out"
    budget = DiskBudget(100_000)  # scene.safetensors fits; the first .ply frames do not
    monkeypatch.setattr(gaussian_io, "open", budget.opener(), raising=False)
    argv = [
        "--weights",
        str(inputs["lrdm.safetensors"]),
        "--input",
        str(inputs["frames"]),
        "--cameras",
        str(inputs["cams.json"]),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--num-times",
        "2",
    ]
    args = reconstruct.parse_args(argv)
    with pytest.raises(OSError) as info:
        reconstruct.run(args)
    assert_enospc(info)
    assert budget.failures >= 1 and budget.left == 0  # it failed mid-way through a .ply
    assert list(tmp_path.iterdir()) == []  # neither the folder, its temporary twin, nor the parent it made
    # the command line: one error line and exit status 1 (not a traceback)
    monkeypatch.setattr(gaussian_io, "open", DiskBudget(100_000).opener(), raising=False)
    assert reconstruct.main(argv) == 1
    err = capsys.readouterr().err
    assert err.strip() == "error: No space left on device (the disk is full; nothing partial was left)", err
    assert list(tmp_path.iterdir()) == []


def test_reconstruct_refuses_a_non_empty_output_folder(tmp_path, inputs, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    argv = [
        "--weights",
        str(inputs["lrdm.safetensors"]),
        "--input",
        str(inputs["frames"]),
        "--cameras",
        str(inputs["cams.json"]),
        "--out",
        str(out),
    ]
    err = cli_error(reconstruct.main, argv, capsys)
    assert f"--out {out}: folder exists and is not empty; pass --overwrite to replace it" in err
    assert snapshot(out) == {"notes.txt": b"mine"}


# ---------------------------------------------------------------------------------------------------- preprocess


def test_preprocess_full_disk_leaves_no_npz(tmp_path, inputs, monkeypatch):
    out = tmp_path / "scene.npz"
    budget = DiskBudget(20_000)
    real_savez = np.savez
    opener = budget.opener()

    def savez_on_full_disk(file, **arrays):
        with opener(file, "wb") as f:
            real_savez(f, **arrays)

    monkeypatch.setattr(preprocess.np, "savez", savez_on_full_disk)
    args = preprocess.parse_args(
        ["--images", str(inputs["frames"]), "--poses", str(inputs["cams.json"]), "--out", str(out)]
    )
    with pytest.raises(OSError) as info:
        preprocess.run(args)
    assert_enospc(info)
    assert budget.left == 0 and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--image", "{img}", "--num-frames", "0"], r"--num-frames 0: the trajectory needs at least one frame"),
        (["--image", "{broken}"], r"broken\.png: unreadable image .*expected a PNG/JPEG/WebP file"),
        (["--images", "{frames}", "--poses", "{zero.json}"], r"zero\.json\): field 'frames' must be a non-empty list"),
        (["--images", "{frames}", "--poses", "{nan.npz}"], r"nan\.npz: field C2W, frame 2: non-finite values"),
        (["--image", "{img}", "--strength", "nan"], r"--strength nan: expected a finite number"),
        (["--image", "{img}", "--fov", "0"], r"--fov 0\.0: expected a vertical field of view in \(0, 180\) degrees"),
    ],
    ids=["zero frames", "unreadable image", "zero-frame trajectory", "NaN pose", "NaN strength", "zero fov"],
)
def test_preprocess_bad_input(tmp_path, inputs, capsys, args, message):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    paths = {"img": inputs["frames"] / "000.png", "broken": tmp_path / "broken.png", **inputs}
    argv = [fill(a, paths) for a in args] + ["--out", str(tmp_path / "o" / "scene.npz")]
    err = cli_error(preprocess.main, argv, capsys)
    assert re.search(message, err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.png"]


# ---------------------------------------------------------------------------------------------------- generate


def _generate_config(*overrides: str):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from diff4splat import generate

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            return generate.to_config(compose(config_name="generate.yaml", overrides=list(overrides)))
    finally:
        GlobalHydra.instance().clear()


def test_generate_non_orthonormal_trajectory_fails_before_any_model(tmp_path, inputs):
    from diff4splat.pipelines.jobs import generate

    traj = make_trajectory("orbit", 13, strength=0.2)
    traj.c2w[4, :3, :3] *= 1.2
    write_trajectory_json(traj, tmp_path / "scaled.json")
    before = snapshot(tmp_path)
    cfg = _generate_config(
        "tiny=true",
        f"image={inputs['frames'] / '000.png'}",
        f"camera={tmp_path / 'scaled.json'}",
        f"output_dir={tmp_path / 'out'}",
    )
    with pytest.raises(
        InputError,
        match=r"scaled\.json: field c2w, frame 4: not a rigid pose \(\|RᵀR - I\| = .*\); "
        r"expected \[R t; 0 0 0 1\] with R orthonormal, det \+1",
    ):
        generate(cfg)
    assert snapshot(tmp_path) == before


def test_generate_misspelt_key_names_it():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match=r"Could not override 'sampling\.stepz'"):
        _generate_config("tiny=true", "sampling.stepz=3")


# ---------------------------------------------------------------------------------------------------- evaluate / view


def test_evaluate_scene_with_nan_trajectory_is_clear_and_writes_nothing(tmp_path, capsys):
    from scene_outputs import write_scene_output

    folder, _ = write_scene_output(tmp_path / "scene", frames=3, height=16, width=16)
    meta = json.loads((folder / "meta.json").read_text())
    meta["trajectory"]["c2w"][1][0][0] = float("nan")
    (folder / "meta.json").write_text(json.dumps(meta))  # json writes NaN, as a careless writer would
    out = tmp_path / "results"
    err = cli_error(evaluate.main, ["scenes", str(folder), "--out", str(out), "--no-lpips", "--device", "cpu"], capsys)
    assert f"{folder / 'meta.json'}: field trajectory.c2w has non-finite values" in err
    assert not out.exists()


def test_evaluate_full_disk_keeps_the_previous_results(tmp_path, monkeypatch):
    from diff4splat.pipelines.evaluation import results as evaluation

    rows = [{c: 1.0 for c in evaluation.SCENE_COLUMNS} | {"scene": "a"}]
    details = [{c: 1.0 for c in evaluation.FRAME_COLUMNS} | {"scene": "a", "frame": k} for k in range(3)]
    old = evaluation.Results("scenes", rows, details, "before")
    out = tmp_path / "results"
    evaluation.write_results(old, out)
    before = snapshot(out)
    budget = DiskBudget(1500)  # the first files fit, a later one does not
    monkeypatch.setattr(evaluation.Path, "write_bytes", lambda self, data: _write_via(budget, self, data))
    new = evaluation.Results("scenes", [{**rows[0], "psnr": 30.0}], details, "after")
    assert len(snapshot(out)) >= 5 and budget.left < sum(map(len, before.values()))  # the budget ends mid-way
    with pytest.raises(OSError) as info:
        evaluation.write_results(new, out)
    assert_enospc(info)
    assert snapshot(out) == before  # every file as it was, no temporary file
    with pytest.raises(OSError):
        evaluation.write_results(new, tmp_path / "fresh" / "results")
    assert not (tmp_path / "fresh").exists()


def _write_via(budget: DiskBudget, path: Path, data: bytes) -> int:
    with budget.opener()(path, "wb") as f:
        return f.write(data)


def test_view_refuses_a_pickle_posing_as_a_scene(tmp_path, capsys):
    folder = tmp_path / "scene"
    folder.mkdir()
    torch.save({"canonical.means": torch.zeros(3, 3)}, folder / "scene.safetensors")
    err = cli_error(view.main, [str(folder), "--port", "0"], capsys)
    assert f"load_4d({folder / 'scene.safetensors'}): not a readable safetensors file" in err


def test_truncated_ply_names_the_file(tmp_path):
    from diff4splat.gaussians import Gaussians

    n = 50
    g = Gaussians(
        torch.randn(n, 3),
        torch.tensor([1.0, 0, 0, 0]).repeat(n, 1),
        torch.full((n, 3), 0.1),
        torch.full((n,), 0.5),
        torch.rand(n, 3),
    )
    path = save_ply(g, tmp_path / "g.ply")
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match=rf"load_ply\({path}\): not a readable PLY file"):
        load_ply(path)


# ---------------------------------------------------------------------------------------------------- configs


def test_misspelt_trainer_key_on_the_command_line_names_it(make_cfg):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match=r"Could not override 'trainer\.max_step'"):
        make_cfg("experiment=fit_synthetic", "trainer.max_step=5")


@pytest.fixture
def conf_copy(tmp_path, monkeypatch) -> Path:
    """A copy of conf/ the test can add experiment files to, used by `compose_cfg` (the shared checkout's conf/
    is not touched)."""
    import conftest

    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf, ignore=shutil.ignore_patterns("local"))
    (conf / "local").mkdir()
    monkeypatch.setattr(conftest, "CONF", conf)
    return conf


def _experiment(conf: Path, name: str, body: str) -> None:
    (conf / "experiment" / f"{name}.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /data: scene_synthetic\n  - override /model: gaussian_field\n"
        "  - override /system: scene_fit\ntask_name: faults\n" + body
    )


def test_misspelt_trainer_key_in_an_experiment_file_names_it(conf_copy, make_cfg):
    from hydra.errors import InstantiationException

    from diff4splat.train import train

    _experiment(conf_copy, "typo_trainer", "trainer:\n  max_step: 5\n")
    cfg = make_cfg("experiment=typo_trainer", "data.height=16", "data.width=16", "model.num_gaussians=50")
    with pytest.raises(InstantiationException, match=r"unexpected keyword argument 'max_step'"):
        train(cfg)
    assert not Path(cfg.paths.output_dir).exists() or not any(Path(cfg.paths.output_dir).rglob("*.ckpt"))


def test_misspelt_model_key_in_an_experiment_file_names_it(conf_copy, make_cfg):
    from hydra.errors import InstantiationException

    from diff4splat.train import train

    _experiment(conf_copy, "typo_model", "model:\n  num_gausians: 50\n")
    cfg = make_cfg("experiment=typo_model", "data.height=16", "data.width=16")
    with pytest.raises(InstantiationException) as info:
        train(cfg)
    assert "system.model: unknown key(s) ['num_gausians'] for GaussianFieldConfig" in str(info.value.__cause__)


def test_top_level_keys_check_names_a_misspelt_key(conf_copy, make_cfg):
    from diff4splat.configs import ConfigError, check_top_level_keys

    _experiment(conf_copy, "typo_top", "optimised_metric: val/psnr\n")
    cfg = make_cfg("experiment=typo_top")
    with pytest.raises(ConfigError, match=r"unknown top-level key\(s\) \['optimised_metric'\].*optimized_metric"):
        check_top_level_keys(cfg, conf_copy / "train.yaml")
    check_top_level_keys(make_cfg("experiment=fit_synthetic"), conf_copy / "train.yaml")  # a correct one passes


def test_misspelt_top_level_key_in_an_experiment_file_fails_training(conf_copy, make_cfg):
    from diff4splat.train import train

    _experiment(conf_copy, "typo_top", "optimised_metric: val/psnr\ntrain: false\ntest: false\n")
    with pytest.raises(ValueError, match="optimised_metric"):
        train(make_cfg("experiment=typo_top", "data.height=16", "data.width=16", "model.num_gaussians=50"))


# ---------------------------------------------------------------------------------------------------- checkpoints
#
# Pickles that would run code are refused everywhere (test_security.py). Two refusals still surface torch's own
# message, which names no file and suggests weights_only=False; their fixes belong to files owned elsewhere.


@pytest.fixture
def pickle_ckpt(tmp_path) -> Path:
    path = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"model.x": torch.zeros(1)}, "callback": threading.Lock}, path)  # a class: refused
    return path


def test_resume_from_a_foreign_pickle_names_the_checkpoint(pickle_ckpt, make_cfg):
    from diff4splat.train import train

    cfg = make_cfg(
        "experiment=fit_synthetic",
        f"ckpt_path={pickle_ckpt}",
        "data.height=16",
        "data.width=16",
        "model.num_gaussians=50",
        "callbacks=none",
        "test=false",
    )
    with pytest.raises(ValueError, match=re.escape(str(pickle_ckpt))):
        train(cfg)


def test_init_from_a_foreign_pickle_names_the_file(pickle_ckpt):
    from diff4splat.systems.reconstruction import load_lrdm_weights

    model = LRDM(lrdm_preset("tiny", dim=48, depth=1, num_heads=4, decoder_channels=8))
    with pytest.raises(ValueError, match=rf"init_from: {re.escape(str(pickle_ckpt))}: refused to load"):
        load_lrdm_weights(model, pickle_ckpt)


def test_camera_weights_that_are_a_pickle_or_of_another_lora_rank_name_the_file(tmp_path, pickle_ckpt):
    from diff4splat.models.camera_wan import CameraWan, CameraWanConfig
    from diff4splat.weights import WeightsError

    tiny = dict(arch="tiny", arch_overrides={"in_channels": 16, "out_channels": 16}, vae_stride=(4, 8, 8))
    disguised = tmp_path / "camera.safetensors"
    disguised.write_bytes(pickle_ckpt.read_bytes())  # a pickle with the right suffix
    model = CameraWan.from_config(CameraWanConfig(**tiny, lora_rank=4))
    with pytest.raises(WeightsError, match=rf"camera weights: {re.escape(str(disguised))}: not a readable"):
        model.load_camera_weights(disguised)
    path = model.save_camera_weights(tmp_path / "rank4.safetensors")
    with pytest.raises(
        WeightsError, match=rf"camera weights: {re.escape(str(path))}: \d+ tensors of another shape.*LoRA rank"
    ):
        CameraWan.from_config(CameraWanConfig(**tiny, lora_rank=2)).load_camera_weights(path)


# ---------------------------------------------------------------------------------------------------- hardening
#
# Inputs that used to be accepted silently, read wrongly or answered with a traceback: each is now refused with one
# line naming the option or file (exit 2), or accepted with one warning line where the input is changed.


FREE_MEMORY = r"(?:available RAM|free RAM|free memory under this cgroup's limit)"  # how the memory check names it


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header announces ``width`` x ``height`` pixels (a decompression bomb) with one tiny data chunk."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)))
    return path


def _generate_cli(overrides: dict, capsys) -> tuple[int, str]:
    """``python -m diff4splat.generate`` in-process (the composed config's values as ``run`` gets them): the exit
    status and stderr."""
    from omegaconf import OmegaConf

    from diff4splat import generate
    from diff4splat.cli import run_cli

    capsys.readouterr()
    code = run_cli(generate.run, OmegaConf.create({"tiny": True, "progress": False, **overrides}))
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (120, 200, 3), dtype=np.uint8)).save(path)
    return path


def test_generate_at_an_impossible_size_is_refused_at_once(tmp_path, photo):
    """trajectory.num_frames=10001 used to allocate until the OOM killer ended it (23.5 GB, exit 137, a temporary
    folder left). The estimate of `diff4splat.pipelines.memory` refuses it before any model or tensor exists: exit 2,
    one line naming the largest frame count that fits, in under 5 s of CPU time (wall-clock time on a shared CPU
    measures the neighbours; on an idle machine it is the same), with the process no larger than its imports."""
    import resource
    import subprocess
    import sys
    import time

    from diff4splat.pipelines import memory

    code = (
        "import runpy, sys\n"
        "sys.argv = ['diff4splat.generate', *sys.argv[1:]]\n"
        "try:\n    runpy.run_module('diff4splat.generate', run_name='__main__')\n"
        "finally:\n    print([line for line in open('/proc/self/status') if line.startswith('VmHWM')][0])\n"
    )
    argv = ["tiny=true", f"image={photo}", "trajectory.num_frames=10001", f"output_dir={tmp_path / 'out'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *argv], cwd=ROOT, env=env, capture_output=True, text=True)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    assert proc.returncode == 2, proc.stderr[-2000:]
    m = re.fullmatch(
        r"error: trajectory\.num_frames=10001 height=96 width=160: needs about ([\d.]+) GiB \(estimated peak of these "
        rf"models\) but {FREE_MEMORY} is ([\d.]+) GiB; the largest that fits is trajectory\.num_frames=(\d+) at "
        r"96x160 \(check_memory=false to try anyway\)\n",
        proc.stderr,
    )
    assert m, proc.stderr
    # the child's own peak RSS (VmHWM; ru_maxrss is inherited across fork and exec, so it would count pytest's)
    maxrss_gib = int(re.search(r"VmHWM:\s+(\d+) kB", proc.stdout)[1]) / 2**20
    print(f"refused in {cpu:.2f} s CPU ({wall:.1f} s wall), peak RSS {maxrss_gib:.2f} GiB: {proc.stderr.strip()}")
    assert cpu < 5.0 and maxrss_gib < 0.5  # torch's import is most of both; nothing was allocated for the run
    largest = int(m[3])
    models = memory.describe_models(_generate_config("tiny=true"), "cpu")
    need = [memory.estimate_bytes(memory.Size(f, 96, 160, 1 + (f - 1) // 4, f), models) for f in (largest, largest + 4)]
    budget = memory.FREE_FRACTION * float(m[2]) * 2**30  # the free memory as the message rounds it
    assert (largest - 1) % 4 == 0 and need[0] <= 1.02 * budget and need[1] > 0.98 * budget  # the largest that fits
    estimate = memory.estimate_bytes(memory.Size(10001, 96, 160, 2501, 10001), models)
    assert float(m[1]) * 2**30 == pytest.approx(estimate, 1e-3)
    assert list(tmp_path.iterdir()) == []


def test_sixteen_bit_and_float_images_are_read_at_their_values(tmp_path):
    from diff4splat.pipelines.inputs import read_image

    grey16 = np.array([[0, 1000], [32768, 65535]], dtype=np.uint16)
    Image.fromarray(grey16).save(tmp_path / "grey16.png")
    img = read_image(tmp_path / "grey16.png")  # 16-bit greyscale: x / 65535 (it read as 99.8 % white)
    torch.testing.assert_close(img, torch.from_numpy(grey16 / 65535.0).float().expand(3, 2, 2))
    ramp = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    Image.fromarray(ramp, mode="F").save(tmp_path / "ramp.tiff")
    torch.testing.assert_close(read_image(tmp_path / "ramp.tiff"), torch.from_numpy(ramp).expand(3, 3, 4))  # not black
    Image.fromarray(ramp * 1000, mode="F").save(tmp_path / "hdr.tiff")
    with pytest.raises(InputError, match=r"hdr\.tiff: floating-point image with values in \[0, 1000\]; expected"):
        read_image(tmp_path / "hdr.tiff")


def test_transparent_pixels_are_composited_over_white(real_fixtures, caplog):
    from diff4splat.pipelines.inputs import read_image

    path = real_fixtures / "nerf_synthetic_lego" / "train" / "r_0.png"  # RGBA, transparent background
    with Image.open(path) as im:
        rgba = np.asarray(im.convert("RGBA")).astype(np.float64) / 255
    with caplog.at_level("WARNING"):
        img = read_image(path).permute(1, 2, 0).double().numpy()
    a = rgba[..., 3:]
    np.testing.assert_allclose(img, rgba[..., :3] * a + (1 - a), atol=1e-6)
    assert (img[a[..., 0] == 0] == 1).all() and (a == 0).mean() > 0.5  # the background is white, not black
    assert "transparent: composited over white" in caplog.text


def test_decompression_bomb_is_one_error_line(tmp_path, capsys):
    bomb = _png_header_only(tmp_path / "bomb.png", 20000, 20000)
    code, err = _generate_cli({"image": str(bomb), "output_dir": str(tmp_path / "out")}, capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: image={bomb}: image too large (") and "downscale it first" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.png"]


def test_singular_world_to_camera_in_a_trajectory_file_names_the_line(tmp_path, photo, capsys):
    from diff4splat.geometry.trajectories import write_re10k_txt

    path = tmp_path / "cams.txt"
    write_re10k_txt(make_trajectory("forward", 13), path)
    lines = path.read_text().splitlines()
    cols = lines[4].split()
    lines[4] = " ".join(cols[:7] + ["0"] * 12)  # frame 4's world-to-camera matrix: all zeros
    path.write_text("\n".join(lines) + "\n")
    code, err = _generate_cli({"image": str(photo), "camera": str(path), "output_dir": str(tmp_path / "o")}, capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "cams.txt: unreadable trajectory file (read_re10k_txt" in err
    assert "line 5: the world-to-camera matrix is singular" in err


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"sampling": {"steps": 0}}, "sampling.steps: expected at least 1 denoising step, got 0"),
        ({"fps": 0}, "fps: expected a frame rate >= 1, got 0"),
        ({"trajectory": {"strength": float("nan")}}, "trajectory.strength: expected finite numbers, got nan"),
        ({"seed": 2**70}, "seed: expected an integer in [0, 2^63 - 1], got 1180591620717411303424"),
        ({"sampling": {"flow_shift": -1.0}}, "sampling.flow_shift: expected a finite number > 0, got -1.0"),
    ],
    ids=["zero steps", "zero fps", "NaN strength", "huge seed", "negative shift"],
)
def test_meaningless_generation_options_are_refused(tmp_path, photo, capsys, overrides, message):
    code, err = _generate_cli({"image": str(photo), "output_dir": str(tmp_path / "out"), **overrides}, capsys)
    assert code == 2 and err == f"error: {message}\n", err
    assert list(tmp_path.iterdir()) == []


def test_tiny_image_is_refused_and_a_big_crop_is_reported(tmp_path, caplog):
    from diff4splat.pipelines.jobs import make_job

    Image.new("RGB", (1, 1), (200, 10, 10)).save(tmp_path / "dot.png")
    cfg = _generate_config("tiny=true", f"image={tmp_path / 'dot.png'}", f"output_dir={tmp_path / 'o'}")
    with pytest.raises(InputError, match=r"dot\.png: the image is 1x1 pixels; expected at least 32 pixels per side"):
        make_job(cfg, tmp_path / "dot.png", "orbit", "", 0, tmp_path / "o")
    Image.new("RGB", (540, 960)).save(tmp_path / "portrait.png")  # 9:16 into the model's 3:5 landscape frame
    with caplog.at_level("WARNING"):
        job = make_job(cfg, tmp_path / "portrait.png", "orbit", "", 0, tmp_path / "o")
    assert job.image.shape == (3, 96, 160)
    assert re.search(r"portrait\.png: the 960x540 image is centre-cropped .* cutting away 66 % of it", caplog.text)


def test_resampled_cameras_are_reported(tmp_path, photo, caplog):
    from diff4splat.pipelines.jobs import make_job

    traj = make_trajectory("orbit", 10_000, strength=0.2)
    write_trajectory_json(traj, tmp_path / "long.json")
    cfg = _generate_config("tiny=true", f"output_dir={tmp_path / 'o'}")
    with caplog.at_level("WARNING"):
        job = make_job(cfg, photo, str(tmp_path / "long.json"), "", 0, tmp_path / "o")
    assert job.cameras.c2w.shape[0] == 13
    assert "long.json: 10000 cameras resampled evenly to trajectory.num_frames=13" in caplog.text


def test_npz_images_outside_the_unit_range_are_refused(tmp_path, inputs, capsys):
    with np.load(inputs["nan.npz"]) as d:
        images, fx = d["images"], d["fxfycxcy"]
    c2w = make_trajectory("orbit", F, strength=0.3).c2w.numpy()
    np.savez(tmp_path / "scaled.npz", images=images.astype(np.float32) / 255 * 1000, C2W=c2w, fxfycxcy=fx)
    argv = ["--weights", str(inputs["lrdm.safetensors"]), "--input", str(tmp_path / "scaled.npz")]
    err = cli_error(reconstruct.main, [*argv, "--out", str(tmp_path / "out"), "--device", "cpu"], capsys)
    assert re.search(
        r"scaled\.npz: field images has values in \[0, 996\.078\]; expected floats in \[0, 1\] or uint8", err
    )
    err = cli_error(reconstruct.main, [*argv, "--out", str(tmp_path / "out"), "--fps", "0"], capsys)
    assert err == "error: --fps 0: expected a frame rate >= 1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scaled.npz"]


def test_generate_overwrite_replaces_only_an_earlier_output(tmp_path, photo, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("mine")
    base = {"image": str(photo), "output_dir": str(out), "sampling": {"steps": 1}, "render": {"novel_frames": 2}}
    code, err = _generate_cli({**base, "overwrite": True}, capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "thesis.tex and no meta.json of a generate or reconstruct output; overwrite=true replaces only" in err
    assert snapshot(out) == {"thesis.tex": b"mine"}
    (out / "thesis.tex").unlink()
    assert _generate_cli(base, capsys)[0] == 0  # an empty folder is written
    first = json.loads((out / "meta.json").read_text())["created"]
    assert _generate_cli({**base, "overwrite": True, "seed": 1}, capsys)[0] == 0  # an earlier output is replaced
    assert json.loads((out / "meta.json").read_text())["seed"] == 1 and first
    (out / "notes.txt").write_text("added later")
    code, err = _generate_cli({**base, "overwrite": True}, capsys)
    assert code == 2 and "an earlier output but also holds notes.txt, which its meta.json does not list" in err
    assert (out / "notes.txt").read_text() == "added later"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_reconstruct_at_an_impossible_size_is_refused_before_the_model_loads(tmp_path, inputs, capsys, monkeypatch):
    monkeypatch.setattr(reconstruct, "load_lrdm", lambda *a: pytest.fail("the model loaded before the check"))
    argv = ["--weights", str(inputs["lrdm.safetensors"]), "--input", str(inputs["frames"]), "--device", "cpu"]
    argv += ["--cameras", str(inputs["cams.json"]), "--out", str(tmp_path / "out"), "--num-times", "1000000000"]
    err = cli_error(reconstruct.main, argv, capsys)
    assert re.search(
        r"5 frames of 36x44 at 1000000000 query times: needs about [\d.]+ GiB \(estimated peak\) but "
        rf"{FREE_MEMORY} is [\d.]+ GiB; --num-times \d+ fits",
        err,
    ), err
    assert list(tmp_path.iterdir()) == []


def test_reconstruct_overwrite_replaces_only_an_earlier_output(tmp_path, inputs, capsys):
    out = tmp_path / "out"
    argv = ["--weights", str(inputs["lrdm.safetensors"]), "--input", str(inputs["frames"])]
    argv += ["--cameras", str(inputs["cams.json"]), "--out", str(out), "--device", "cpu", "--num-times", "2"]
    assert reconstruct.main(argv) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["format"] == "diff4splat-reconstruction" and "scene.safetensors" in meta["files"]
    assert reconstruct.main([*argv, "--overwrite"]) == 0  # its own earlier output
    (out / "mine.txt").write_text("keep")
    err = cli_error(reconstruct.main, [*argv, "--overwrite"], capsys)
    assert "also holds mine.txt, which its meta.json does not list; --overwrite replaces only" in err
    assert (out / "mine.txt").read_text() == "keep"


def test_unwritable_output_is_found_before_any_model_and_named(tmp_path, photo, capsys, monkeypatch):
    from diff4splat.pipelines.generation import Diff4SplatPipeline

    if os.geteuid() == 0:
        parent = Path("/sys/diff4splat-test")  # root may write anywhere but on a read-only file system
    else:
        parent = tmp_path / "locked"
        parent.mkdir(mode=0o555)
    monkeypatch.setattr(Diff4SplatPipeline, "from_config", lambda *a: pytest.fail("models built before the check"))
    out = parent / "out"
    code, err = _generate_cli({"image": str(photo), "output_dir": str(out)}, capsys)
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith(f"error: output_dir={out}: cannot be written (") and ".tmp" not in err


def _wait_for(pattern: str, folder: Path, proc, timeout: float = 240.0) -> Path:
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
        if proc.poll() is not None:
            pytest.fail(f"the run ended ({proc.returncode}) before its temporary folder appeared: {proc.stderr.read()}")
        time.sleep(0.05)
    pytest.fail(f"no {pattern} in {folder} after {timeout} s")


def test_killed_runs_leave_no_temporary_folder(tmp_path, photo):
    """SIGTERM removes the run's temporary folder before it exits; SIGKILL (the OOM killer) cannot be caught, so
    the next run for the same output removes the folder of the dead process, and nothing else."""
    import signal
    import subprocess
    import sys

    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "diff4splat.generate", "tiny=true", f"image={photo}", f"output_dir={out}"]
    cmd += ["sampling.steps=200", "progress=false"]
    mine = tmp_path / ".out.tmp-notes"  # a user's entry with a similar name
    mine.mkdir()
    live = tmp_path / f".out.tmp-{os.getpid()}@{__import__('socket').gethostname()}-abcdefgh"  # a live process's
    live.mkdir()

    killed = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    left = _wait_for(f".out.tmp-{killed.pid}@*", tmp_path, killed)
    killed.kill()
    assert killed.wait() == -signal.SIGKILL and left.is_dir()  # nothing can clean up after SIGKILL

    run = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    tmp = _wait_for(f".out.tmp-{run.pid}@*", tmp_path, run)
    assert not left.exists()  # the dead run's folder went when this one started
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=120) == 128 + signal.SIGTERM
    assert run.stderr.read().strip().endswith("error: stopped by SIGTERM; nothing partial was left")
    assert not tmp.exists() and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, live.name])


def test_generate_misspelt_key_is_one_line_naming_the_valid_keys(capsys):
    from diff4splat import generate

    with pytest.raises(SystemExit) as info:
        generate.main(["tiny=true", "sampling.stepz=3"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: sampling.stepz: no such key in the config; valid keys under")
    assert "steps" in err and "guidance_scale" in err


def test_generate_help_lists_its_own_options(capsys):
    from dataclasses import fields, is_dataclass

    from diff4splat import generate
    from diff4splat.pipelines.jobs import GenerateConfig

    with pytest.raises(SystemExit) as info:
        generate.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: python -m diff4splat.generate" in out and "tiny=true image=photo.jpg" in out
    assert "trainer" not in out and "Config groups" not in out  # not the training config's help
    for line in ("trajectory.num_frames=null", "sampling.steps=25", "low_memory.offload=false", "overwrite=false"):
        assert f"  {line}\n" in out, line

    def leaves(obj, prefix=""):
        for f in fields(obj):
            value = getattr(obj, f.name)
            if is_dataclass(value) and f"{prefix}{f.name}" != "models.camera_wan":
                yield from leaves(value, f"{prefix}{f.name}.")
            else:
                yield f"{prefix}{f.name}".replace("models.camera_wan", "models.camera_wan.camera_weights")

    lines = out.split("Options (key=default: meaning):\n")[1].splitlines()
    described = {  # "  key=default" followed by "      meaning"
        line.strip().split("=")[0]: nxt.strip()
        for line, nxt in zip(lines, [*lines[1:], ""])
        if line.startswith("  ") and not line.startswith("   ") and nxt.startswith("      ")
    }
    names = list(leaves(GenerateConfig()))
    assert len(names) > 40 and all(described.get(n) for n in names), [n for n in names if not described.get(n)]


def test_preprocess_reads_a_nerfstudio_transforms_json(tmp_path, real_fixtures, caplog):
    from datamodules.sources.dl3dv import nerfstudio_poses

    lego = real_fixtures / "nerf_synthetic_lego"
    frames = tmp_path / "train"
    frames.mkdir()
    for name in ("r_2.png", "r_0.png"):  # two of the 100 listed frames (r_2: r_0's pixels)
        shutil.copy(lego / "train" / "r_0.png", frames / name)
    argv = ["--images", str(frames), "--poses", str(lego / "transforms_train.json"), "--out", str(tmp_path / "l.npz")]
    with caplog.at_level("WARNING"):
        assert preprocess.main(argv) == 0
    data = json.loads((lego / "transforms_train.json").read_text())
    ref = nerfstudio_poses([data["frames"][0], data["frames"][2]], "lego", "transforms_train.json")  # OpenCV
    with np.load(tmp_path / "l.npz") as d:
        c2w, fx, images = d["C2W"], d["fxfycxcy"], d["images"]
    np.testing.assert_allclose(c2w[1], np.linalg.inv(ref[0]) @ ref[1], atol=1e-5)  # canonical: camera 0 = identity
    focal = 0.5 / np.tan(data["camera_angle_x"] / 2)  # camera_angle_x, square 800x800 frames
    np.testing.assert_allclose(fx, [[focal, focal, 0.5, 0.5]] * 2, rtol=1e-6)
    assert images.shape == (2, 3, 800, 800) and images[:, :, 0, 0].min() == 1.0  # composited over white
    assert "100 frames listed, 2 of them have an image: those are used" in caplog.text


def test_inspect_missing_path_is_one_error_line(tmp_path, capsys):
    from datamodules import inspect

    assert inspect.main([str(tmp_path / "nope"), "--out", str(tmp_path / "sheet.png")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith(f"error: {tmp_path / 'nope'}: no such file, folder or glob match")
    (tmp_path / "empty").mkdir()
    assert inspect.main([str(tmp_path / "empty")]) == 2
    assert "no shards (.tar) found" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]
