"""Evaluation results: the rows of one evaluation, their summary, CSV and markdown tables, plots, and the files they
are written to (see `diff4splat.pipelines.evaluation`)."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from diff4splat.files import atomic_files

CLIP_COLUMNS = (
    "clip",
    "dataset",
    "views",
    "psnr",
    "ssim",
    "lpips",
    "psnr_nearest_input",
    "depth_abs_rel",
    "depth_delta1",
    "epe3d",
    "epe3d_within_0.10",
    "epe3d_motion",
)
VIEW_COLUMNS = ("clip", "view", "frame", "time", "time_gap", "psnr", "ssim", "lpips")
SCENE_COLUMNS = (
    "scene",
    "frames",
    "gaussians",
    "psnr",
    "ssim",
    "lpips",
    "warp_error_video",
    "warp_error_render",
    "warp_coverage",
)
FRAME_COLUMNS = ("scene", "frame", "time", "psnr", "ssim", "lpips", "warp_error_video", "warp_error_render")
_DECIMALS = {"psnr": 2, "psnr_nearest_input": 2, "time": 3, "time_gap": 3, "views": 1, "frames": 1, "gaussians": 0}


@dataclass
class Results:
    """Rows of one evaluation: ``rows`` (one per clip or scene) and ``details`` (one per view or frame)."""

    kind: Literal["clips", "scenes"]
    rows: list[dict[str, Any]]
    details: list[dict[str, Any]]
    source: str  # what was evaluated, for the report's title
    skipped: list[str] = dataclasses.field(default_factory=list)  # clips that could not be evaluated, with reasons

    @property
    def columns(self) -> tuple[str, ...]:
        return CLIP_COLUMNS if self.kind == "clips" else SCENE_COLUMNS

    @property
    def detail_columns(self) -> tuple[str, ...]:
        return VIEW_COLUMNS if self.kind == "clips" else FRAME_COLUMNS

    def summary(self) -> dict[str, Any]:
        """Mean of every numeric column over the rows that have it, and how many rows that is."""
        out: dict[str, Any] = {
            "kind": self.kind,
            "source": self.source,
            "count": len(self.rows),
            "skipped": len(self.skipped),
            "mean": {},
            "rows_with_value": {},
        }
        for col in self.columns:
            values = [r[col] for r in self.rows if isinstance(r.get(col), float | int) and not isinstance(r[col], bool)]
            finite = [float(v) for v in values if math.isfinite(v)]
            if values:
                out["mean"][col] = float(np.mean(finite)) if finite else math.nan
                out["rows_with_value"][col] = len(finite)
        return out


def _cell(value: Any, col: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "" if value is None or math.isnan(value) else str(value)
    if isinstance(value, float):
        return f"{value:.{_DECIMALS.get(col, 4)}f}"
    return str(value)


def to_csv(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    """CSV text: a header and one line per row (missing or NaN values empty)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        writer.writerow([_cell(r.get(c), c) for c in columns])
    return buf.getvalue()


def to_markdown(results: Results) -> str:
    """The per-row table with a final mean row, under a title; NaN / missing values as "–"."""
    cols = results.columns
    summary = results.summary()
    lines = [
        f"# Evaluation: {results.source}",
        "",
        f"{summary['count']} {results.kind} evaluated, {summary['skipped']} skipped.",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "|".join("---" for _ in cols) + "|",
    ]
    for r in results.rows:
        lines.append("| " + " | ".join(_cell(r.get(c), c) or "–" for c in cols) + " |")
    mean = ["**mean**"] + [
        f"**{_cell(summary['mean'][c], c)}**" if c in summary["mean"] and math.isfinite(summary["mean"][c]) else "–"
        for c in cols[1:]
    ]
    lines.append("| " + " | ".join(mean) + " |")
    if results.skipped:
        lines += ["", "Skipped:", *[f"- {s}" for s in results.skipped]]
    return "\n".join(lines) + "\n"


def _figure_png(draw: Callable[[Any], None], size: tuple[float, float]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=size)
    try:
        draw(fig)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
    finally:
        plt.close(fig)
    return buf.getvalue()


def plots(results: Results) -> dict[str, bytes]:
    """PNG images by file name: clips → metrics per clip and PSNR against each view's time gap to the nearest
    input; scenes → re-rendering PSNR and warping error per frame."""
    out: dict[str, bytes] = {}
    if results.kind == "clips":
        names = [c for c in ("psnr", "ssim", "lpips") if c in results.rows[0]]
        x = np.arange(len(results.rows))

        def per_clip(fig: Any) -> None:
            for i, name in enumerate(names):
                ax = fig.add_subplot(len(names), 1, i + 1)
                ax.bar(x, [r[name] for r in results.rows], color="tab:blue", label="LRDM")
                if name == "psnr":
                    ax.plot(x, [r["psnr_nearest_input"] for r in results.rows], "k_", ms=12, label="nearest input")
                    ax.legend(fontsize=7)
                ax.set_ylabel(name)
                ax.set_xticks(x)
            ax.set_xlabel("clip")

        def per_view(fig: Any) -> None:
            ax = fig.add_subplot(1, 1, 1)
            ax.scatter([d["time_gap"] for d in results.details], [d["psnr"] for d in results.details], s=8)
            ax.set_xlabel("time gap to the nearest input")
            ax.set_ylabel("PSNR (dB)")

        out["metrics_per_clip.png"] = _figure_png(per_clip, (max(4.0, 0.3 * len(x) + 2), 2.2 * len(names)))
        out["psnr_vs_time_gap.png"] = _figure_png(per_view, (4.5, 3.5))
    else:

        def per_frame(column: str, ylabel: str) -> Callable[[Any], None]:
            def draw(fig: Any) -> None:
                ax = fig.add_subplot(1, 1, 1)
                for r in results.rows:
                    frames = [d for d in results.details if d["scene"] == r["scene"]]
                    ax.plot([d["frame"] for d in frames], [d[column] for d in frames], label=Path(r["scene"]).name)
                    if column == "warp_error_video":
                        ax.plot(
                            [d["frame"] for d in frames],
                            [d["warp_error_render"] for d in frames],
                            "--",
                            color=ax.lines[-1].get_color(),
                        )
                ax.set_xlabel("frame")
                ax.set_ylabel(ylabel)
                if len(results.rows) <= 10:
                    ax.legend(fontsize=7)

            return draw

        out["rerender_psnr.png"] = _figure_png(per_frame("psnr", "re-render PSNR (dB)"), (5, 3.5))
        out["warp_error.png"] = _figure_png(per_frame("warp_error_video", "warp error (video —, render --)"), (5, 3.5))
    return out


def _json_safe(value: Any) -> Any:
    """NaN / inf -> None (strict JSON), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def write_results(results: Results, out_dir: str | Path) -> list[Path]:
    """``results.csv`` (one row per clip / scene), ``views.csv`` or ``frames.csv``, ``results.md``,
    ``summary.json`` and the plots, written together: everything is computed first, each file goes to a temporary
    name, and the files are renamed into place only when all are written (a failure, e.g. a full disk, removes the
    temporary files and a folder this made, and leaves earlier results as they were)."""
    out_dir = Path(out_dir)
    detail_name = "views.csv" if results.kind == "clips" else "frames.csv"
    summary = results.summary()
    summary["skipped_reasons"] = results.skipped
    files: dict[str, bytes] = {
        "results.csv": to_csv(results.rows, results.columns).encode(),
        detail_name: to_csv(results.details, results.detail_columns).encode(),
        "results.md": to_markdown(results).encode(),
        "summary.json": json.dumps(_json_safe(summary), indent=1).encode(),
        **plots(results),
    }
    paths = [out_dir / name for name in files]
    with atomic_files(paths) as tmps:
        for tmp, data in zip(tmps, files.values(), strict=True):
            tmp.write_bytes(data)
    return paths
