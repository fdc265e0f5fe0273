"""Images and videos as files: tensors to uint8 frames, depth to colours, contact sheets, and the mp4 / PNG writers
that the CLIs, the pipelines and the media-logging callback share. Files are written through `diff4splat.files`, so
each appears complete or not at all.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from diff4splat.files import atomic_file


def to_uint8(images: Tensor) -> np.ndarray:
    """[V, 3, H, W] in [0, 1] -> (V, H, W, 3) uint8 (quantised where the images are: a GPU copies 4x fewer bytes)."""
    return (images.float().clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()


def depth_to_color(depth: Tensor) -> np.ndarray:
    """[V, 1, H, W] depth -> (V, H, W, 3) uint8, disparity normalised over the whole sequence (turbo-like map),
    computed where the depth is."""
    depth = depth.float()
    disp = 1.0 / depth.clamp_min(1e-6)
    disp = torch.where(depth > 0, disp, torch.zeros_like(disp))
    pos = disp[disp > 0]
    # the 2 % quantile by kthvalue: torch.quantile refuses inputs over 2^24 values (49 frames at 480x832 have 19.6M)
    lo = pos.kthvalue(max(1, int(0.02 * (pos.numel() - 1)) + 1)).values if pos.numel() else 0.0
    hi = disp.max()
    x = ((disp - lo) / (hi - lo + 1e-8)).clamp(0, 1)[:, 0]
    rgb = torch.stack([(1.5 - (4 * x - c).abs()).clamp(0, 1) for c in (3, 2, 1)], -1)
    return (rgb * 255 + 0.5).to(torch.uint8).cpu().numpy()


def contact_sheet(rows: list[Tensor], pad: int = 2) -> np.ndarray:
    """Rows of images [n_i, 3, H, W] in [0, 1] -> one (H', W', 3) uint8 sheet (rows left-aligned, white padding)."""
    h, w = rows[0].shape[-2:]
    cols = max(r.shape[0] for r in rows)
    sheet = np.full((len(rows) * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            sheet[y : y + h, x : x + w] = to_uint8(img[None])[0]
    return sheet


def write_video(frames: np.ndarray, path: str | Path, fps: int = 8, preset: str = "veryfast", crf: int = 20) -> Path:
    """(F, H, W, 3) uint8 -> H.264 mp4 at ``path`` (sizes padded to even), written atomically.

    ``preset``/``crf``: libx264's speed/size trade-off and constant quality (0 lossless, 23 x264's default). x264's
    default preset ``medium`` takes 3.5x longer than ``veryfast`` for files of about the same size at crf 20."""
    import av

    f, h, w, _ = frames.shape
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    with atomic_file(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": preset, "crf": str(crf)})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for i, frame in enumerate(frames):
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            picture.pts = i  # explicit timestamps: without them x264's rate control varies from run to run
            for packet in stream.encode(picture):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return Path(path)


def write_image(image: np.ndarray, path: str | Path) -> Path:
    """(H, W, 3) uint8 -> a PNG at ``path``, written atomically."""
    from PIL import Image

    with atomic_file(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    return Path(path)
