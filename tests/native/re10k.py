"""Write a `GroundTruth` scene as a RealEstate10K clip in its native format: the 19-column txt plus frames.

``layout="official"``: ``<root>/<split>/<clip>.txt`` with frames in ``<root>/<split>/frames/<clip>/<ts>.png`` or
``<root>/<split>/videos/<clip>.mp4``; ``layout="cameractrl"``: ``<root>/pose_files/<clip>.txt`` + ``<root>/videos/``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from datamodules.spec import encode_video
from tests.native.scene import GroundTruth


def pose_lines(gt: GroundTruth, timestamps_us: np.ndarray, rows: list[int] | None = None) -> list[str]:
    """The txt lines (URL first) of frames ``rows`` (all when None): timestamp, fx fy cx cy, 0 0, w2c row-major."""
    rows = list(range(len(gt.c2w))) if rows is None else rows
    lines = ["https://www.youtube.com/watch?v=TESTCLIP000"]
    for i in rows:
        w2c = np.linalg.inv(gt.c2w[i])[:3, :4]
        nums = [*gt.fxfycxcy[i], 0.0, 0.0, *w2c.reshape(-1)]
        lines.append(f"{int(timestamps_us[i])} " + " ".join(f"{v:.12f}" for v in nums))
    return lines


def write_clip(
    root: Path,
    gt: GroundTruth,
    clip: str = "0123456789abcdef",
    split: str = "train",
    layout: str = "official",
    frames: str = "png",
    rows: list[int] | None = None,
    time_offset_us: int = 0,
    fps: float = 10.0,
) -> Path:
    """Write one clip; ``frames`` = png | jpg | mp4 (the mp4 holds every frame of ``gt`` at ``fps``).

    ``rows`` picks which frames get a txt row (all by default); row timestamps are ``i / fps`` s plus
    ``time_offset_us`` (an offset beyond the video's duration makes it a pre-cut clip aligned by index). Returns the
    pose file.
    """
    base = root / split if layout == "official" else root
    pose_dir = base if layout == "official" else root / "pose_files"
    pose_dir.mkdir(parents=True, exist_ok=True)
    ts = np.round(np.arange(len(gt.c2w)) / fps * 1e6).astype(np.int64) + time_offset_us
    path = pose_dir / f"{clip}.txt"
    path.write_text("\n".join(pose_lines(gt, ts, rows)) + "\n")
    if frames == "mp4":
        (base / "videos").mkdir(parents=True, exist_ok=True)
        (base / "videos" / f"{clip}.mp4").write_bytes(encode_video(gt.rgb, fps=fps))
    else:
        folder = base / "frames" / clip
        folder.mkdir(parents=True, exist_ok=True)
        for i in rows if rows is not None else range(len(gt.c2w)):
            Image.fromarray(gt.rgb[i]).save(folder / f"{ts[i]}.{frames}", quality=95)
    return path
