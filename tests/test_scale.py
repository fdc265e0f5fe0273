"""One scale convention (diff4splat/geometry/scale.py): provenance in the clip and latent schemas, one scene-unit rule
with measured fallbacks, the reference's window filters, and generation / reconstruction in the user's units."""

from __future__ import annotations

import dataclasses
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from datamodules.spec import ClipMeta, SpecError, decode_sample, encode_clip, validate_clip
from datamodules.stream import ClipSamplingConfig, ClipTransform, SourceConfig
from datamodules.synthetic import SyntheticConfig, generate_clip
from datamodules.write import ShardWriter
from diff4splat.geometry import scale as S


@pytest.fixture(scope="module")
def synth():
    """A 17-frame synthetic clip of the fallback measurement's kind (experiments/scale_fallback, clip 0)."""
    return generate_clip(SyntheticConfig(num_frames=17, height=48, width=64, dynamic=False), seed=0)


def _raw(clip) -> dict:
    return {"__key__": clip.key, **encode_clip(clip)}


# ------------------------------------------------------------------------------------------------ provenance


def test_old_spec_meta_reads_with_provenance_from_the_dataset(synth):
    for dataset, depth_unit, expected in [
        ("re10k", "arbitrary", "arbitrary"),
        ("dl3dv", "arbitrary", "arbitrary"),
        ("tartanair", "m", "metric"),
        ("my_own_data", "m", "arbitrary"),  # unknown: never guessed metric
    ]:
        raw = _raw(synth)
        d = json.loads(raw["meta.json"])
        d.pop("scale_source")
        d.update(spec_version="1.0", dataset=dataset, depth_unit=depth_unit)
        raw["meta.json"] = json.dumps(d).encode()
        clip = decode_sample(raw)
        assert clip.meta.scale_source == expected, dataset


def test_nothing_arbitrary_is_labelled_metric(synth):
    clip = dataclasses.replace(synth, meta=ClipMeta.for_dataset("re10k", "s", metric_scale=1.0))
    assert clip.meta.scale_source == "arbitrary"  # what the converters get from for_dataset
    for meta, field, message in [
        (ClipMeta.for_dataset("re10k", "s", scale_source="metric"), "meta.scale_source", "arbitrary scale"),
        (
            ClipMeta.for_dataset("tartanair", "s", depth_unit="arbitrary", scale_source="metric"),
            "meta.scale_source",
            "depth_unit .arbitrary.",
        ),
        (ClipMeta.for_dataset("re10k", "s", scale_source="metric_estimated"), "meta.extra", "scale_estimator"),
        (ClipMeta.for_dataset("re10k", "s", metric_scale=2.0), "meta.metric_scale", "arbitrary"),
        (ClipMeta.for_dataset("re10k", "s", scale_source="meters"), "meta.scale_source", "one of"),
    ]:
        with pytest.raises(SpecError, match=message) as e:
            validate_clip(dataclasses.replace(synth, meta=meta))
        assert e.value.field == field
    ok = ClipMeta.for_dataset("re10k", "s", scale_source="metric_estimated", extra={"scale_estimator": "depthpro"})
    validate_clip(dataclasses.replace(synth, meta=ok))


def test_converter_provenance_table():
    assert {d: ClipMeta.for_dataset(d, "s").scale_source for d in ("re10k", "dl3dv")} == {
        "re10k": "arbitrary",
        "dl3dv": "arbitrary",
    }
    for d in (
        "tartanair",
        "matrixcity",
        "dynamicreplica",
        "pointodyssey",
        "vkitti2",
        "spring",
        "stereo4d",
        "synthetic",
    ):
        assert ClipMeta.for_dataset(d, "s").scale_source == "metric", d


# ------------------------------------------------------------------------------------------------ one rule


@pytest.mark.parametrize("augment_on", ["worker", "device"])
def test_depth_less_copy_normalises_within_the_measured_fallback_error(synth, augment_on):
    """The clip without depth (and without tracks) but with an SfM-like point cloud lands within the measured
    `points` error of the depth-based scene unit; with its tracks only, within the `tracks` error."""
    from datamodules.batch import collate, finish_batch

    cfg = ClipSamplingConfig(num_input=5, num_output=4, resolution=64, random_aspect=False, augment_on=augment_on)
    source = SourceConfig(name="synthetic", shards=[], max_gap=17)
    rng = np.random.default_rng(0)
    points = S.points_from_depth(synth.depth, synth.depth_valid, synth.c2w, synth.fxfycxcy, 2000, rng)
    copies = {
        "points": dataclasses.replace(
            synth, depth=None, depth_valid=None, tracks_world=None, tracks_visible=None, points_world=points
        ),
        "tracks": dataclasses.replace(synth, depth=None, depth_valid=None),
    }

    def run(clip, seed):
        s = ClipTransform(cfg, train=True).transform(clip, np.random.default_rng(seed), (48, 64), source)
        return finish_batch(collate([s], cfg.num_input)) if augment_on == "device" else s

    worst = {}
    for seed in range(4):  # s = the sample's metric_scale (meta.metric_scale is 1); error |s_depth / s_copy - 1|
        full = float(run(synth, seed)["metric_scale"])
        for method, copy in copies.items():
            err = abs(full / float(run(copy, seed)["metric_scale"]) - 1.0)
            worst[method] = max(worst.get(method, 0.0), err)
    assert worst["points"] <= S.FALLBACK_ERROR["points"], worst
    assert worst["tracks"] <= S.FALLBACK_ERROR["tracks"], worst
    assert worst["points"] < worst["tracks"]  # why points come first


def test_fallback_order_and_camera_heuristic():
    c2w = np.tile(np.eye(4), (3, 1, 1))
    c2w[1:, 0, 3] = [0.1, 0.2]
    K = np.tile([1.0, 1.0, 0.5, 0.5], (3, 1))
    pts = np.array([[0.0, 0.0, 2.0], [0.0, 0.0, -5.0]])  # the second is behind every camera
    tracks = np.full((3, 1, 3), np.nan)
    tracks[0, 0] = [0.0, 0.0, 4.0]
    visible = ~np.isnan(tracks[..., 0])
    assert S.fallback_mean(c2w, K, tracks, visible, pts) == (pytest.approx(np.mean([2.0, 2.0 - 0.0, 2.0])), "points")
    assert S.fallback_mean(c2w, K, tracks, visible, None) == (4.0, "tracks")
    assert S.fallback_mean(c2w, K) == (pytest.approx(S.CAMERA_DISTANCE_RATIO * 0.15), "cameras")
    assert S.fallback_mean(c2w[:1], K[:1]) == (None, "none")


# ------------------------------------------------------------------------------------------------ window filters


def test_reference_window_filters_redraw_and_count(synth):
    cfg = ClipSamplingConfig(num_input=5, num_output=4, resolution=32, random_aspect=False, window_attempts=20)
    source = SourceConfig(name="synthetic", shards=[], max_gap=17)
    # frame 16 sees no valid depth: a window that uses it is redrawn; one that does not passes
    bad = dataclasses.replace(synth, depth_valid=synth.depth_valid.copy())
    bad.depth_valid[16] = False
    t = ClipTransform(cfg, train=True)
    for seed in range(8):
        out = t.transform(bad, np.random.default_rng(seed), (32, 32), source)
        assert 16 not in out["frame_indices"]
    assert t.rejected_windows["valid_depth"] > 0 and t.rejected_windows["rotation"] == 0
    # consecutive inputs turning by 60 degrees: every window is rejected, the clip is skipped (a data error)
    c2w = synth.c2w.copy()
    a = np.radians(60.0) * np.arange(len(c2w))
    c2w[:, 0, 0], c2w[:, 0, 2], c2w[:, 2, 0], c2w[:, 2, 2] = np.cos(a), np.sin(a), -np.sin(a), np.cos(a)
    turning = dataclasses.replace(synth, c2w=c2w)
    t = ClipTransform(cfg, train=True)
    with pytest.raises(ValueError, match="no frame window of 20 draws"):
        t.transform(turning, np.random.default_rng(0), (32, 32), source)
    assert t.rejected_windows == {"valid_depth": 0, "rotation": 20}
    relaxed = ClipTransform(dataclasses.replace(cfg, max_input_rotation=180.0), train=True)
    relaxed.transform(turning, np.random.default_rng(0), (32, 32), source)  # switched off: accepted


def test_stream_stats_count_rejected_windows(tmp_path, synth):
    from datamodules.stream import ClipStream

    bad = dataclasses.replace(synth, depth_valid=synth.depth_valid.copy())
    bad.depth_valid[8:] = False
    with ShardWriter(tmp_path, source="test") as w:
        w.write(bad)
    cfg = ClipSamplingConfig(num_input=3, num_output=2, resolution=32, random_aspect=False)
    src = SourceConfig(name="synthetic", shards=str(tmp_path / "*.tar"), max_gap=17)
    stream = ClipStream([src], cfg, batch_size=2, batches_per_epoch=3, train=True, seed=0, shuffle_buffer=0)
    batches = list(stream)
    assert len(batches) == 3
    assert stream.stats.rejected_windows["valid_depth"] > 0
    for b in batches:
        assert (b["depth_valid"].flatten(2).float().mean(-1) > 0).all()  # no frame without valid depth


# ------------------------------------------------------------------------------------------------ encode_latents


def _latent_metas(folder: Path) -> dict:
    from datamodules.latents import LatentMeta

    out = {}
    for tar in sorted(folder.glob("*.tar")):
        with tarfile.open(tar) as tf:
            for ti in tf:
                key, _, suffix = ti.name.partition(".")
                if suffix == "meta.json":
                    out[key] = LatentMeta.from_json(tf.extractfile(ti).read())
    return out


def test_encode_latents_records_provenance_and_never_writes_metric_for_arbitrary(tmp_path, synth):
    from datamodules.encode_latents import encode_latents
    from datamodules.latents import LatentSpecError, decode_latent_sample
    from diff4splat.models.wan_vae import WanVAE

    re10k = dataclasses.replace(
        synth,
        key="re10kclip",
        meta=ClipMeta.for_dataset("re10k", "seq", depth_unit="arbitrary", metric_scale=1.0),
        depth=None,
        depth_valid=None,
        tracks_world=None,
        tracks_visible=None,
    )
    metric = dataclasses.replace(synth, key="synthclip")
    shards = tmp_path / "clips"
    with ShardWriter(shards, source="test") as w:
        w.write(re10k)
        w.write(metric)
    tars = sorted(str(p) for p in shards.glob("*.tar"))
    vae = WanVAE.tiny()
    kw = dict(num_frames=5, height=32, width=32, stride=2)
    counts = encode_latents(tars, tmp_path / "metric", vae, "tiny", pose_scale="metric", **kw)
    assert counts["arbitrary_refused"] == 1 and counts["written"] == 1
    metas = _latent_metas(tmp_path / "metric")
    assert [(m.dataset, m.pose_scale, m.scale_source) for m in metas.values()] == [("synthetic", "metric", "metric")]
    counts = encode_latents(tars, tmp_path / "scene", vae, "tiny", pose_scale="scene", **kw)
    assert counts["arbitrary_refused"] == 0 and counts["written"] == 2
    metas = _latent_metas(tmp_path / "scene")
    assert {(m.dataset, m.pose_scale, m.scale_source, m.scale_method) for m in metas.values()} == {
        ("re10k", "scene", "arbitrary", "cameras"),
        ("synthetic", "scene", "metric", "depth"),
    }
    # a latent-1.0 sample (metric poses, no provenance) of an arbitrary source is refused on read
    with tarfile.open(next((tmp_path / "scene").glob("*.tar"))) as tf:
        raw = {}
        for ti in tf:
            key, _, suffix = ti.name.partition(".")
            raw.setdefault(key, {"__key__": key})[suffix] = tf.extractfile(ti).read()
    old = raw[next(k for k in raw if k.startswith("re10k"))]
    d = json.loads(old["meta.json"])
    for k in ("pose_scale", "scale_source", "scene_scale", "scale_method"):
        d.pop(k)
    old["meta.json"] = json.dumps({**d, "spec_version": "latent-1.0"}).encode()
    with pytest.raises(LatentSpecError, match="metric poses from an arbitrary-scale source"):
        decode_latent_sample(old)


def test_trajectory_auto_scale_is_scale_invariant():
    import torch

    from diff4splat.geometry.trajectories import make_trajectory

    c2w = make_trajectory("spiral", 13, look_at=3.0).c2w
    big = c2w.clone()
    big[:, :3, 3] *= 10
    a, b = S.auto_trajectory_scale(c2w), S.auto_trajectory_scale(big)
    assert a == pytest.approx(10 * b, rel=1e-12)
    assert S.trajectory_extent(c2w * torch.tensor(1.0)) * a == pytest.approx(S.AUTO_TRAJECTORY_EXTENT)
    assert S.auto_trajectory_scale(make_trajectory("pan_left", 13).c2w) == 1.0  # turning only: unchanged


# ------------------------------------------------------------------------------------------------ pipelines


def _camera_file(path: Path, c2w, fxfycxcy, times) -> Path:
    np.savez(path, C2W=c2w.numpy(), fxfycxcy=fxfycxcy.numpy(), timestep=times.numpy())
    return path


def _render(scene, c2w, fxfycxcy, times, h, w):
    import torch

    from diff4splat.rendering import render

    out = [render(scene.at(float(t)), c[None], k[None], h, w, backend="torch") for c, k, t in zip(c2w, fxfycxcy, times)]
    return torch.cat([o.rgb for o in out]), torch.cat([o.depth for o in out])


def test_reconstruct_trajectory_x10_gives_the_same_renders_and_gaussians_x10(tmp_path):
    """Translations x10: the same renders (<= 1e-4) and Gaussian means x10 (±1e-4 relative), through the pipeline
    and through `python -m diff4splat.reconstruct`, whose meta.json states the units; a fixed translation_scale
    (the override) does not have this property."""
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    from diff4splat import reconstruct
    from diff4splat.configs import to_plain
    from diff4splat.gaussians.io import load_4d
    from diff4splat.geometry.trajectories import make_trajectory
    from diff4splat.models.lrdm import LRDM, lrdm_preset
    from diff4splat.pipelines.generation import _randomise_zero_inits
    from diff4splat.pipelines.reconstruction import ReconstructionPipeline

    torch.manual_seed(0)
    cfg = lrdm_preset("tiny", dim=48, depth=2, num_heads=4, decoder_channels=8)
    model = LRDM(cfg).eval()
    _randomise_zero_inits(model, torch.Generator().manual_seed(1))  # the camera branch sees the translations
    F, H, W = 5, 32, 40
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.random((F, 3, H, W), dtype=np.float32))
    traj = make_trajectory("spiral", F, strength=0.8, look_at=2.0)
    c2w, K = traj.c2w.float(), traj.fxfycxcy.float()
    big = c2w.clone()
    big[:, :3, 3] *= 10
    pipe = ReconstructionPipeline(model, backend="torch")
    a, b = pipe(images, c2w, K, prune_threshold=0.0), pipe(images, big, K, prune_threshold=0.0)
    assert b.scale.lrdm_scale == pytest.approx(a.scale.lrdm_scale / 10, rel=1e-5)
    torch.testing.assert_close(b.gaussians.canonical.means, 10 * a.gaussians.canonical.means, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b.gaussians.canonical.scales, 10 * a.gaussians.canonical.scales, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(b.gaussians.delta_means, 10 * a.gaussians.delta_means, rtol=1e-4, atol=1e-5)
    ra, da = _render(a.gaussians, a.c2w, K, a.input_times, H, W)
    rb, db = _render(b.gaussians, b.c2w, K, b.input_times, H, W)
    torch.testing.assert_close(rb, ra, rtol=0, atol=1e-4)
    torch.testing.assert_close(db, 10 * da, rtol=1e-4, atol=1e-4)
    fixed_a = pipe(images, c2w, K, translation_scale=1.0, prune_threshold=0.0)
    fixed_b = pipe(images, big, K, translation_scale=1.0, prune_threshold=0.0)
    ratio = fixed_b.gaussians.canonical.means.norm() / fixed_a.gaussians.canonical.means.norm()
    assert abs(float(ratio) - 10) > 0.1  # the override is not scale-free: the automatic rescale is what makes it

    # the CLI: scene.safetensors x10, meta.json with units and scale
    weights = tmp_path / "lrdm.safetensors"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(weights), metadata={"hparams": json.dumps({"model": to_plain(cfg)})})
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(F):
        Image.fromarray((images[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(
            frames / f"{i:03d}.png"
        )
    scenes, metas = [], []
    for name, cams in (("one", c2w), ("ten", big)):
        cam_file = _camera_file(tmp_path / f"{name}.npz", cams.double(), K.double(), torch.linspace(0, 1, F))
        out = tmp_path / name
        argv = ["--weights", str(weights), "--input", str(frames), "--cameras", str(cam_file), "--out", str(out)]
        assert reconstruct.main([*argv, "--device", "cpu", "--prune", "0"]) == 0
        scenes.append(load_4d(out / "scene.safetensors"))
        metas.append(json.loads((out / "meta.json").read_text()))
    torch.testing.assert_close(scenes[1].canonical.means, 10 * scenes[0].canonical.means, rtol=1e-4, atol=1e-5)
    assert "input cameras' units" in metas[0]["units"] and metas[0]["scale"]["mode"] == "auto"
    assert metas[1]["scale"]["lrdm_scale"] == pytest.approx(metas[0]["scale"]["lrdm_scale"] / 10, rel=1e-5)


@pytest.mark.parametrize("encoder", ["latent", "vggt"])
def test_the_measuring_pass_skips_the_deformation_and_measures_the_same_distance(encoder):
    """The automatic rescale's first pass (`rescaled_reconstruction`) runs ``canonical_only``: the canonical
    Gaussians equal a full pass's exactly, the time-conditioned heads never run, and the reconstruction is the one
    two full passes give."""
    import torch

    from diff4splat.geometry.trajectories import make_trajectory
    from diff4splat.models.lrdm import LRDM, lrdm_preset
    from diff4splat.pipelines.generation import _randomise_zero_inits
    from diff4splat.pipelines.scale import rescaled_reconstruction
    from tests.test_lrdm_vggt import tiny_config

    torch.manual_seed(0)
    F, H, W = 5, 28, 42
    if encoder == "vggt":
        model = LRDM(tiny_config()).eval()
        heads = (model.backbone.motion_head, model.backbone.motion_splat_head)
        extra = {"images": torch.rand(1, F, 3, H, W)}
    else:
        H, W = 32, 48
        model = LRDM(lrdm_preset("tiny", dim=48, depth=2, num_heads=4, decoder_channels=8, encoder="latent")).eval()
        heads = (model.deform_head,)
        c, s = model.config.latent_channels, model.config.latent_stride_s
        extra = {"latents": torch.randn(1, c, 2, H // s, W // s), "image_size": (H, W)}
    _randomise_zero_inits(model, torch.Generator().manual_seed(1))  # deformations that are not zero
    traj = make_trajectory("spiral", F, strength=0.8, look_at=2.0)
    c2w, K, t = traj.c2w.float(), traj.fxfycxcy.float(), torch.linspace(0, 1, F)
    q = torch.tensor([0.2, 0.7, 1.0])
    calls = []
    for head in heads:
        head.register_forward_hook(lambda *_: calls.append(1))

    def run(cams, canonical_only):
        with torch.no_grad():
            out = model(cams[None], K[None], t[None], q[None], **extra, canonical_only=canonical_only)
        return out.gaussians.unbind()[0]

    full = run(c2w, False)
    assert len(calls) > 0 and full.delta_means.abs().max() > 1e-4  # the full pass deforms
    calls.clear()
    only = run(c2w, True)
    assert calls == [] and only.delta_means.abs().max() == 0 and torch.equal(only.times, full.times)
    for k in ("means", "quats", "scales", "opacities", "colors"):
        assert torch.equal(getattr(only.canonical, k), getattr(full.canonical, k)), k
    passes = []
    g, info = rescaled_reconstruction(lambda cams, co: passes.append(co) or run(cams, co), c2w)
    assert passes == [True, False] and info.mode == "auto"
    g2, info2 = rescaled_reconstruction(lambda cams, co: run(cams, False), c2w)  # two full passes
    assert info.lrdm_scale == info2.lrdm_scale
    torch.testing.assert_close(g.delta_means, g2.delta_means, rtol=0, atol=0)
    torch.testing.assert_close(g.canonical.means, g2.canonical.means, rtol=0, atol=0)


def test_generate_tiny_trajectory_x10_gives_the_same_renders_and_gaussians_x10(tmp_path):
    """`generate tiny=true` with a camera file and its translations x10, trajectory.scale=auto (the camera model sees
    the same cameras): the same renders of the exported scene from the exported trajectory (<= 1e-4 but at the
    renderer's alpha cut-off), Gaussians and
    trajectory x10 (±1e-4 relative); meta.json states the units."""
    import torch
    from PIL import Image

    from diff4splat.gaussians.io import load_4d
    from diff4splat.geometry.trajectories import make_trajectory
    from diff4splat.pipelines.jobs import GenerateConfig, LRDMOptions, TrajectoryOptions, generate
    from diff4splat.sampling import SamplingConfig

    torch.set_num_threads(1)
    photo = tmp_path / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (96, 160, 3), dtype=np.uint8)).save(photo)
    traj = make_trajectory("dolly_in", 13, strength=0.6, look_at=3.0, fxfycxcy=(0.9, 1.5, 0.5, 0.5))
    outs = []
    for name, factor in (("one", 1.0), ("ten", 10.0)):
        c2w = traj.c2w.clone()
        c2w[:, :3, 3] *= factor
        cams = _camera_file(tmp_path / f"{name}.npz", c2w, traj.fxfycxcy, traj.times())
        cfg = GenerateConfig(
            image=str(photo),
            camera=str(cams),
            tiny=True,
            output_dir=str(tmp_path / name),
            trajectory=TrajectoryOptions(num_frames=13, scale="auto"),
            sampling=SamplingConfig(steps=2),
            lrdm=LRDMOptions(num_times=3, prune_threshold=0.0),
            progress=False,
        )
        outs.append(generate(cfg))
    (a, b) = (load_4d(o / "scene.safetensors") for o in outs)
    ma, mb = (json.loads((o / "meta.json").read_text()) for o in outs)
    torch.testing.assert_close(b.canonical.means, 10 * a.canonical.means, rtol=1e-4, atol=1e-5)
    ca, cb = (torch.tensor(m["trajectory"]["c2w"]) for m in (ma, mb))
    torch.testing.assert_close(cb[:, :3, 3], 10 * ca[:, :3, 3], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ca[:, :3, 3], traj.c2w[:, :3, 3].float(), rtol=1e-4, atol=1e-6)  # the file's units
    K, t = torch.tensor(ma["trajectory"]["fxfycxcy"]), torch.tensor(ma["trajectory"]["times"])
    h, w = ma["trajectory"]["height"], ma["trajectory"]["width"]
    ra, _ = _render(a, ca, K, t, h, w)
    rb, _ = _render(b, cb, K, t, h, w)
    # equal to 1e-4 but where a Gaussian sits on the renderer's alpha cut-off (1/255): float32 rounding of the x10
    # scene flips those few contributions (33 of 599 040 values here)
    diff = (rb - ra).abs()
    assert float((diff > 1e-4).float().mean()) < 1e-4 and float(diff.max()) <= 1.0 / 255
    assert "trajectory's units" in ma["units"]["scene"] and ma["lrdm"]["scale"]["mode"] == "auto"
    assert ma["inputs"]["cameras"]["scale"]["factor"] == pytest.approx(10 * mb["inputs"]["cameras"]["scale"]["factor"])


@pytest.mark.parametrize(
    ("section", "value", "message"),
    [
        ("trajectory", {"scale": "metres"}, r"trajectory\.scale: expected auto or a number > 0, got 'metres'"),
        ("trajectory", {"scale": -2.0}, r"trajectory\.scale: expected auto or a number > 0, got -2\.0"),
        ("lrdm", {"translation_scale": 0.0}, r"lrdm\.translation_scale: expected a number > 0, or null"),
    ],
)
def test_bad_scale_options_are_one_line_errors(section, value, message):
    from diff4splat.cli import InputError
    from diff4splat.pipelines.jobs import GenerateConfig, LRDMOptions, TrajectoryOptions, check_options

    opts = {"trajectory": TrajectoryOptions, "lrdm": LRDMOptions}[section](**value)
    with pytest.raises(InputError, match=message):
        check_options(GenerateConfig(tiny=True, **{section: opts}))
