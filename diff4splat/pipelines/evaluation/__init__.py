"""Evaluation: an LRDM on held-out clips of a shard set, and generated scenes against their own videos; results
tables (markdown + CSV), a summary and plots.

**Clips** (`evaluate_clips`): each clip of the shards, in order, becomes one evaluation sample through the
deterministic evaluation view of the data pipeline (`datamodules.transform.ClipTransform(train=False)`: F_in inputs
spread over the first ``max_gap`` frames, F_out outputs, by default ``eval_outputs="held_out"`` = frames that are
not inputs, so every output is a novel view at a novel time; the whole frame at the clip's own aspect, long side
``resolution``; canonical, scale-normalised cameras). The LRDM predicts Gaussians from the inputs, deformed to each
output's time and rendered from its camera (opacities at or below the pruning threshold zeroed, as inference prunes
them). Per clip: PSNR / SSIM / LPIPS of the renders against the held-out frames (means over views), the PSNR of the
nearest input frame as a baseline (`nearest_input_frames`), depth AbsRel and δ<1.25 of the rendered depth at the
output views where the clip has ground-truth depth, and 3D track end-point errors where it has tracks: ``epe3d``
compares the position of the Gaussian of the pixel a track is seen at in an input frame, at each output time,
with the track's position then (`diff4splat.losses.motion.track_motion` pairs them); ``epe3d_motion`` compares
the displacements only (no depth error in it).

**Scenes** (`evaluate_scene`): an output folder of the generation CLI (``scene.safetensors``, ``video.mp4``,
``meta.json`` with the trajectory). Re-rendering consistency: the Gaussians rendered at each requested camera and
time against the generated frame (PSNR / SSIM / LPIPS). Temporal consistency: the warping error
(`diff4splat.metrics.warp_error`) of consecutive generated frames along the scene's own motion (where the Gaussians
seen at a pixel at time t are at time t+1: a render of their t+1 positions as colours), and the same for the
renders (a reference: what the 4D scene itself achieves).

One module per job: `clips`, `scenes`, and `results` (the tables, summary and plots, written together by
`write_results`). Metric definitions: `diff4splat.metrics`.
"""

from diff4splat.pipelines.evaluation.clips import ClipEvalConfig, clip_batch, evaluate_clip, evaluate_clips
from diff4splat.pipelines.evaluation.results import Results, write_results
from diff4splat.pipelines.evaluation.scenes import evaluate_scene, evaluate_scenes

__all__ = [
    "ClipEvalConfig",
    "Results",
    "clip_batch",
    "evaluate_clip",
    "evaluate_clips",
    "evaluate_scene",
    "evaluate_scenes",
    "write_results",
]
