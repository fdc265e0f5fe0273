"""Frame codecs: (F,H,W,3) uint8 RGB frames to and from the encoded bytes a clip stores (`datamodules.spec`): one
JPEG or PNG per frame, or one H.264 mp4, and an encoded image's size read from its header.

These are the clip schema's byte formats, used by the converters, the shard writer, the streaming reader and the
tools; `diff4splat.media` is the other side, writing rendered images and videos as files for people to look at.
"""

from __future__ import annotations

import io
from typing import Literal

import numpy as np

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def encode_frames(frames: np.ndarray, fmt: Literal["jpg", "png"] = "jpg", quality: int = 95) -> list[bytes]:
    """Encode (F,H,W,3) uint8 RGB frames to a list of F JPEG/PNG byte strings (deterministic)."""
    from PIL import Image

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (F,H,W,3) uint8, got {frames.shape} {frames.dtype}")
    out = []
    for f in frames:
        buf = io.BytesIO()
        if fmt == "jpg":
            Image.fromarray(f).save(buf, format="JPEG", quality=quality)
        elif fmt == "png":
            Image.fromarray(f).save(buf, format="PNG", compress_level=1)
        else:
            raise ValueError(f"unknown image format {fmt!r}")
        out.append(buf.getvalue())
    return out


def encode_video(frames: np.ndarray, fps: float = 30.0, crf: int = 18) -> bytes:
    """Encode (F,H,W,3) uint8 RGB frames (H, W even) to H.264 mp4 bytes with PyAV."""
    import av

    frames = np.asarray(frames)
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=int(round(fps)))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


_SOF_MARKERS = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) of an encoded image from its header, without decoding the pixels: the PNG IHDR chunk or the
    JPEG start-of-frame segment is read directly (a few µs; opening the image with PIL costs ~50 µs, a share of the
    streaming reader's per-clip check), PIL for anything else or any header this does not understand."""
    if data[:8] == PNG_MAGIC and data[12:16] == b"IHDR" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:2] == b"\xff\xd8":
        i, n = 2, len(data)
        while i + 9 <= n and data[i] == 0xFF:
            marker = data[i + 1]
            if marker in _SOF_MARKERS:
                return int.from_bytes(data[i + 7 : i + 9], "big"), int.from_bytes(data[i + 5 : i + 7], "big")
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return im.size


def decode_image(data: bytes, draft: tuple[int, int] | None = None) -> np.ndarray:
    """Decode one JPEG/PNG to (H,W,3) uint8. `draft=(w, h)` lets JPEG decode at a reduced scale (≥ that size)."""
    from PIL import Image

    im = Image.open(io.BytesIO(data))
    if draft is not None and im.format == "JPEG":
        im.draft("RGB", draft)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im)


def decode_video(data: bytes, indices: list[int] | None = None) -> np.ndarray:
    """Decode frames `indices` (all when None) of mp4 bytes to (F,H,W,3) uint8: decord when installed, else (or when
    decord fails: it cannot copy out some narrow frames, e.g. 16 or 48 pixels wide) PyAV. Unreadable bytes raise
    ValueError."""
    try:
        import decord
    except ImportError:
        decord = None
    if decord is not None:
        try:
            vr = decord.VideoReader(io.BytesIO(data), num_threads=1)
            idx = list(range(len(vr))) if indices is None else list(indices)
            return vr.get_batch(idx).asnumpy()
        except (RuntimeError, decord.DECORDError) as e:  # decord reports unreadable bytes as a RuntimeError
            try:
                return _decode_video_av(data, indices)
            except (ImportError, ValueError):
                raise ValueError(f"unreadable mp4 ({len(data)} bytes): {e}") from e
    return _decode_video_av(data, indices)


def _decode_video_av(data: bytes, indices: list[int] | None) -> np.ndarray:
    import av

    try:
        with av.open(io.BytesIO(data)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        if indices is not None:
            frames = [frames[i] for i in indices]
    except (av.error.FFmpegError, IndexError) as e:
        raise ValueError(f"unreadable mp4 ({len(data)} bytes): {e}") from e
    if not frames:
        raise ValueError(f"unreadable mp4 ({len(data)} bytes): no video frames")
    return np.stack(frames)
