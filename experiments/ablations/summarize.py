"""Summarise a Hydra multirun of ablations into ``experiments/ablations/<name>/``.

    python experiments/ablations/summarize.py outputs/abl_lrdm/multiruns/<stamp> --name lrdm --reference abl_lrdm_base

Reads every job folder ``<sweep>/<n>/`` (``summary.json`` with the final metrics, ``.hydra/overrides.yaml`` for the
ablation and the seed, ``csv/**/metrics.csv`` for the curves) and writes, each file atomically:

- ``results.md``: the command, the commit, the date; one row per job (ablation, seed, final metrics); mean ± sample std
  over seeds per ablation; each ablation against ``--reference`` (the per-seed paired differences, their mean, and
  whether the difference is beyond the seed noise); the hand-written ``notes.md`` of that folder
  when there is one (what the numbers show);
- ``results.csv``: one row per job, every final metric at full precision (``repr`` of the float in summary.json);
- ``curves.png``: validation curves (``--curves``, default ``val/psnr`` and ``val/loss``) per ablation, one thin line
  per seed and a thick line for the mean.

A job's ablation is its ``experiment=`` override plus any other override (except ``seed``) whose value differs
between jobs; its seed is the ``seed=`` override, else the ``seed`` of its ``.hydra/config.yaml``. ``--derived
gap=val/loss_shuffled_cameras-val/loss`` adds a metric computed per job as the difference of two metrics.

"Beyond noise" is a deliberately simple rule for a handful of seeds: every per-seed paired difference has the same
sign and the absolute mean difference exceeds the larger of the two arms' seed standard deviations.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import shlex
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import yaml

from diff4splat.files import atomic_write_bytes

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_METRICS_PREFIX = ("test/", "val/")
DEFAULT_CURVES = ("val/psnr", "val/loss")
LOWER_IS_BETTER = ("loss", "lpips", "abs_rel", "epe", "mse")


class SummaryError(ValueError):
    """A multirun folder or one of its files is not what the summary needs."""


@dataclass
class Job:
    """One job of the sweep: where it ran, its overrides, seed, final metrics and logged curves."""

    num: int
    path: Path
    overrides: dict[str, str]
    seed: int
    metrics: dict[str, float]
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # metric -> [(step, value)]
    wall_s: float | None = None
    ablation: str = ""


# ---------------------------------------------------------------------------------------------------------- reading
def _read_yaml(path: Path) -> object:
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SummaryError(f"{path}: not valid YAML ({e})") from e


def parse_overrides(path: Path) -> dict[str, str]:
    """``.hydra/overrides.yaml`` (a YAML list of ``key=value`` strings) -> {key: value}."""
    if not path.is_file():
        raise SummaryError(f"{path}: missing (every Hydra job folder has .hydra/overrides.yaml)")
    items = _read_yaml(path)
    if items is None:
        return {}
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise SummaryError(f"{path}: expected a YAML list of 'key=value' strings, got {items!r}")
    out = {}
    for item in items:
        if "=" not in item:
            raise SummaryError(f"{path}: override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        out[key] = value
    return out


def read_summary(path: Path) -> dict[str, float]:
    """``summary.json`` -> its ``metrics`` as floats."""
    if not path.is_file():
        raise SummaryError(f"{path}: missing (the job did not finish: diff4splat.train writes it at the end)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SummaryError(f"{path}: not valid JSON ({e})") from e
    metrics = data.get("metrics") if isinstance(data, dict) else None
    if not isinstance(metrics, dict):
        raise SummaryError(f"{path}: field 'metrics' must be an object of metric name -> number")
    out = {}
    for k, v in metrics.items():
        if not isinstance(v, int | float) or isinstance(v, bool):
            raise SummaryError(f"{path}: field 'metrics.{k}' must be a number, got {v!r}")
        out[k] = float(v)
    return out


def read_curves(job_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every metric column of the job's CSV logs as (step, value) pairs (empty cells skipped)."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(job_dir.glob("csv/**/metrics.csv")):
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or "step" not in reader.fieldnames:
                raise SummaryError(f"{path}: expected a Lightning CSVLogger file with a 'step' column")
            for line, row in enumerate(reader, start=2):
                for k, v in row.items():
                    if k in ("step", "epoch") or v in ("", None):
                        continue
                    try:
                        curves.setdefault(k, []).append((int(row["step"]), float(v)))
                    except ValueError as e:
                        raise SummaryError(f"{path}:{line}: column {k!r}: expected a number, got {v!r}") from e
    return curves


def _job_seed(job_dir: Path, overrides: dict[str, str]) -> int:
    raw: object = overrides.get("seed")
    where = f"{job_dir / '.hydra/overrides.yaml'}: field 'seed'"
    if raw is None:
        cfg_path = job_dir / ".hydra" / "config.yaml"
        cfg = _read_yaml(cfg_path) if cfg_path.is_file() else None
        raw = cfg.get("seed") if isinstance(cfg, dict) else None
        where = f"{cfg_path}: field 'seed'"
    try:
        return int(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise SummaryError(f"{where}: expected an integer seed, got {raw!r}") from None


def _wall_seconds(job_dir: Path) -> float | None:
    start, end = job_dir / ".hydra" / "config.yaml", job_dir / "summary.json"
    if start.is_file() and end.is_file():
        return end.stat().st_mtime - start.stat().st_mtime
    return None


def load_sweep(sweep: Path) -> list[Job]:
    """Every numbered job folder of ``sweep``, with the ablation label of each job set."""
    if not sweep.is_dir():
        raise SummaryError(f"{sweep}: not a folder (expected a Hydra multirun folder outputs/<task>/multiruns/<stamp>)")
    dirs = sorted((p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    if not dirs:
        raise SummaryError(f"{sweep}: no job folders (expected numbered sub-folders 0/, 1/, ... of a Hydra multirun)")
    jobs = []
    for d in dirs:
        overrides = parse_overrides(d / ".hydra" / "overrides.yaml")
        jobs.append(
            Job(
                num=int(d.name),
                path=d,
                overrides=overrides,
                seed=_job_seed(d, overrides),
                metrics=read_summary(d / "summary.json"),
                curves=read_curves(d),
                wall_s=_wall_seconds(d),
            )
        )
    varying = sorted(
        k
        for k in {k for j in jobs for k in j.overrides}
        if k not in ("experiment", "seed") and len({j.overrides.get(k) for j in jobs}) > 1
    )
    for j in jobs:
        parts = [j.overrides["experiment"]] if "experiment" in j.overrides else []
        parts += [f"{k}={j.overrides[k]}" for k in varying if k in j.overrides]
        j.ablation = " ".join(parts) or "default"
    seen: dict[tuple[str, int], int] = {}
    for j in jobs:
        if (j.ablation, j.seed) in seen:
            raise SummaryError(
                f"{sweep}: jobs {seen[(j.ablation, j.seed)]} and {j.num} are both ablation "
                f"{j.ablation!r} with seed {j.seed}; each (ablation, seed) must run once"
            )
        seen[(j.ablation, j.seed)] = j.num
    return jobs


def add_derived(jobs: Sequence[Job], derived: Sequence[str]) -> list[str]:
    """``name=a-b`` -> metric ``name`` = metric a - metric b per job (and per curve step). Returns the names."""
    names = []
    for spec in derived:
        name, sep, expr = spec.partition("=")
        a, minus, b = expr.partition("-")
        if not sep or not minus or not name or not a or not b:
            raise SummaryError(f"--derived {spec!r}: expected NAME=METRIC_A-METRIC_B")
        for j in jobs:
            for m in (a, b):
                if m not in j.metrics:
                    raise SummaryError(
                        f"{j.path / 'summary.json'}: --derived {spec!r} needs metric {m!r}, "
                        f"which this job did not log (it has {sorted(j.metrics)})"
                    )
            j.metrics[name] = j.metrics[a] - j.metrics[b]
            cb = dict(j.curves.get(b, []))
            j.curves[name] = [(s, v - cb[s]) for s, v in j.curves.get(a, []) if s in cb]
        names.append(name)
    return names


def sweep_command(sweep: Path, jobs: Sequence[Job]) -> tuple[str, bool]:
    """The multirun command: from Hydra's ``multirun.yaml`` of this sweep (Hydra writes it in the sweep folder of
    the primary config, which is ``outputs/train/multiruns/<stamp>`` when the experiments set their own task_name),
    else rebuilt from the jobs' overrides. Returns (command, whether it came from multirun.yaml)."""
    candidates = [
        sweep / "multirun.yaml",
        *sorted(sweep.parent.parent.parent.glob(f"*/multiruns/{sweep.name}/multirun.yaml")),
    ]
    for path in candidates:
        if path.is_file():
            data = _read_yaml(path)
            try:
                task = data["hydra"]["overrides"]["task"]  # type: ignore[index]
            except (KeyError, TypeError):
                continue
            return "python -m diff4splat.train -m " + " ".join(shlex.quote(str(t)) for t in task), True
    # no multirun.yaml: the sweep as the jobs' overrides describe it (Hydra's normalised spelling of each value)
    keys: dict[str, list[str]] = {}
    for j in jobs:
        for k, v in j.overrides.items():
            if v not in keys.setdefault(k, []):
                keys[k].append(v)
    rebuilt = " ".join(shlex.quote(f"{k}={','.join(v)}") for k, v in keys.items())
    return f"python -m diff4splat.train -m {rebuilt}", False


# ---------------------------------------------------------------------------------------------------------- numbers
@dataclass
class Aggregate:
    ablation: str
    seeds: list[int]
    mean: dict[str, float]
    std: dict[str, float]  # sample std over seeds (NaN with one seed)


def aggregate(jobs: Sequence[Job], metrics: Sequence[str]) -> list[Aggregate]:
    """Mean and sample standard deviation over seeds per ablation (ablations in order of first appearance)."""
    order = list(dict.fromkeys(j.ablation for j in jobs))
    out = []
    for name in order:
        group = sorted((j for j in jobs if j.ablation == name), key=lambda j: j.seed)
        mean, std = {}, {}
        for m in metrics:
            values = [j.metrics[m] for j in group if m in j.metrics]
            mean[m] = statistics.fmean(values) if values else math.nan
            std[m] = statistics.stdev(values) if len(values) > 1 else math.nan
        out.append(Aggregate(name, [j.seed for j in group], mean, std))
    return out


@dataclass
class Comparison:
    ablation: str
    metric: str
    diff: float  # mean over common seeds of (ablation - reference); the difference of the means without any
    paired: list[float]  # per common seed, ablation - reference
    beyond_noise: bool


def compare(jobs: Sequence[Job], aggs: Sequence[Aggregate], reference: str, metrics: Sequence[str]) -> list[Comparison]:
    """Each ablation against the reference arm (see the module docstring for the noise rule)."""
    by_name = {a.ablation: a for a in aggs}
    if reference not in by_name:
        raise SummaryError(f"--reference {reference!r} is not an ablation of this sweep; ablations: {sorted(by_name)}")
    ref = by_name[reference]
    ref_jobs = {j.seed: j for j in jobs if j.ablation == reference}
    out = []
    for a in aggs:
        if a.ablation == reference:
            continue
        mine = {j.seed: j for j in jobs if j.ablation == a.ablation}
        for m in metrics:
            paired = [
                mine[s].metrics[m] - ref_jobs[s].metrics[m]
                for s in sorted(mine)
                if s in ref_jobs and m in mine[s].metrics and m in ref_jobs[s].metrics
            ]
            diff = statistics.fmean(paired) if paired else a.mean[m] - ref.mean[m]
            spread = max((x for x in (a.std[m], ref.std[m]) if not math.isnan(x)), default=math.nan)
            same_sign = len(paired) > 1 and (all(p > 0 for p in paired) or all(p < 0 for p in paired))
            beyond = bool(same_sign and not math.isnan(spread) and abs(diff) > spread)
            out.append(Comparison(a.ablation, m, diff, paired, beyond))
    return out


def fmt(x: float) -> str:
    """Numbers in tables: 4 significant digits (NaN as an em dash)."""
    if x is None or math.isnan(x):
        return "—"
    return f"{x:.4g}"


def choose_metrics(jobs: Sequence[Job], requested: Sequence[str] | None) -> list[str]:
    present = set().union(*(j.metrics for j in jobs))
    if requested:
        missing = [m for m in requested if m not in present]
        if missing:
            raise SummaryError(f"--metrics {missing}: no job logged them; logged: {sorted(present)}")
        return list(requested)
    for prefix in DEFAULT_METRICS_PREFIX:
        chosen = sorted(m for m in present if m.startswith(prefix))
        if chosen:
            return chosen
    return sorted(present)


# ---------------------------------------------------------------------------------------------------------- writing
def results_csv(jobs: Sequence[Job]) -> str:
    names = sorted(set().union(*(j.metrics for j in jobs)))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["ablation", "seed", "job", "wall_s", *names])
    for j in jobs:
        wall = "" if j.wall_s is None else f"{j.wall_s:.1f}"
        w.writerow([j.ablation, j.seed, j.num, wall, *(repr(j.metrics[m]) if m in j.metrics else "" for m in names)])
    return buf.getvalue()


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right_from: int = 1) -> list[str]:
    align = ["---" if i < right_from else "---:" for i in range(len(header))]
    return [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(align) + " |",
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def results_md(
    name: str,
    sweep: Path,
    command: tuple[str, bool],
    summarize_command: str,
    commit: str,
    date: str,
    jobs: Sequence[Job],
    metrics: Sequence[str],
    aggs: Sequence[Aggregate],
    comparisons: Sequence[Comparison],
    reference: str | None,
    notes: str | None,
) -> str:
    lines = [f"# Ablations: {name}", ""]
    note = "" if command[1] else " (rebuilt from the jobs' overrides: the sweep's multirun.yaml was not found)"
    lines += [
        f"- Command: `{command[0]}`{note}",
        f"- Summary: `{summarize_command}`",
        f"- Commit: `{commit}`",
        f"- Date: {date}",
        f"- Sweep folder: `{sweep}` ({len(jobs)} jobs)",
        "",
    ]
    walls = [j.wall_s for j in jobs if j.wall_s is not None]
    if walls:
        lines += [
            f"Wall time per job: median {statistics.median(walls):.0f} s (min {min(walls):.0f}, max {max(walls):.0f}).",
            "",
        ]
    if notes:
        lines += ["## What the numbers show", "", notes.strip(), ""]
    lines += ["## Mean ± std over seeds", ""]
    rows = [
        [a.ablation, ",".join(map(str, a.seeds)), *(f"{fmt(a.mean[m])} ± {fmt(a.std[m])}" for m in metrics)]
        for a in aggs
    ]
    lines += _table(["ablation", "seeds", *metrics], rows, right_from=2) + [""]
    if reference:
        lines += [
            f"## Against the reference `{reference}`",
            "",
            "Δ = ablation − reference, averaged over the seeds both ran (in brackets: per seed); beyond "
            "noise: every paired difference has the same sign and |Δ| exceeds the larger seed std of the two "
            f"arms. Lower is better for metrics containing {', '.join(LOWER_IS_BETTER)}.",
            "",
        ]
        rows = []
        for abl in dict.fromkeys(c.ablation for c in comparisons):
            cs = [c for c in comparisons if c.ablation == abl]
            cells = [
                f"{fmt(c.diff)} ({', '.join(fmt(p) for p in c.paired)}){' **' if c.beyond_noise else ''}" for c in cs
            ]
            rows.append([abl, *cells])
        lines += _table(["ablation", *metrics], rows) + ["", "`**` = beyond noise.", ""]
    lines += ["## Every job", ""]
    rows = [[j.ablation, str(j.seed), str(j.num), *(fmt(j.metrics.get(m, math.nan)) for m in metrics)] for j in jobs]
    lines += _table(["ablation", "seed", "job", *metrics], rows, right_from=1) + [""]
    lines += ["Full-precision values of every logged metric: `results.csv`. Curves: `curves.png`.", ""]
    return "\n".join(lines)


def curves_png(jobs: Sequence[Job], curves: Sequence[str], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [c for c in curves if any(c in j.curves for j in jobs)]
    if not present:
        raise SummaryError(f"no job's CSV log has any of the curves {list(curves)} (csv/**/metrics.csv)")
    fig, axes = plt.subplots(1, len(present), figsize=(5.5 * len(present), 4), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    order = list(dict.fromkeys(j.ablation for j in jobs))
    for ax, metric in zip(axes[0], present):
        for i, abl in enumerate(order):
            color = colors[i % len(colors)]
            series = [dict(j.curves.get(metric, [])) for j in jobs if j.ablation == abl]
            for s in series:
                steps = sorted(s)
                ax.plot(steps, [s[k] for k in steps], color=color, alpha=0.35, linewidth=1)
            common = sorted(set.intersection(*(set(s) for s in series))) if series else []
            if common:
                ax.plot(
                    common,
                    [statistics.fmean(s[k] for s in series) for k in common],
                    color=color,
                    linewidth=2.2,
                    marker="o",
                    markersize=3,
                    label=f"{abl} (n={len(series)})",
                )
        ax.set_xlabel("step")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head.stdout.strip() + (" (working tree had uncommitted changes)" if dirty.stdout.strip() else "")


def summarize(
    sweep: Path,
    name: str,
    out_root: Path,
    reference: str | None = None,
    metrics: Sequence[str] | None = None,
    curves: Sequence[str] = DEFAULT_CURVES,
    derived: Sequence[str] = (),
    argv: Sequence[str] | None = None,
    commit: str | None = None,
) -> Path:
    """Read ``sweep``, write ``out_root/name/{results.md, results.csv, curves.png}``; returns that folder. Everything is
    read, checked and rendered before the first file is written. ``commit``: the commit the jobs ran at (default:
    this checkout's HEAD now)."""
    jobs = load_sweep(sweep)
    derived_names = add_derived(jobs, derived)
    chosen = choose_metrics(jobs, metrics)
    chosen += [d for d in derived_names if d not in chosen]
    aggs = aggregate(jobs, chosen)
    comparisons = compare(jobs, aggs, reference, chosen) if reference else []
    out = out_root / name
    notes_path = out / "notes.md"
    notes = notes_path.read_text() if notes_path.is_file() else None
    summarize_command = "python experiments/ablations/summarize.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else [str(sweep), "--name", name])
    )
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    md = results_md(
        name,
        sweep,
        sweep_command(sweep, jobs),
        summarize_command,
        commit or git_commit(),
        date,
        jobs,
        chosen,
        aggs,
        comparisons,
        reference,
        notes,
    )
    png = curves_png(jobs, list(curves) + [d for d in derived_names if d not in curves], f"ablations: {name}")
    table = results_csv(jobs)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "results.csv", table.encode())
    atomic_write_bytes(out / "curves.png", png)
    atomic_write_bytes(out / "results.md", md.encode())
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("sweep", type=Path, help="Hydra multirun folder: outputs/<task>/multiruns/<stamp>")
    p.add_argument("--name", required=True, help="results go to <out>/<name>/")
    p.add_argument("--out", type=Path, default=ROOT / "experiments" / "ablations")
    p.add_argument("--reference", help="the ablation the others are compared with (e.g. abl_lrdm_base)")
    p.add_argument(
        "--metrics",
        help="comma-separated final metrics for the tables (default: every test/* metric, else every val/* one)",
    )
    p.add_argument("--curves", default=",".join(DEFAULT_CURVES), help="comma-separated metrics to plot over steps")
    p.add_argument("--derived", action="append", default=[], help="NAME=A-B: a metric computed per job (repeatable)")
    p.add_argument("--commit", help="the commit the jobs ran at (default: this checkout's HEAD)")
    args = p.parse_args(argv)
    try:
        out = summarize(
            args.sweep,
            args.name,
            args.out,
            args.reference,
            args.metrics.split(",") if args.metrics else None,
            args.curves.split(","),
            args.derived,
            argv=argv,
            commit=args.commit,
        )
    except SummaryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out / 'results.md'}, {out / 'results.csv'}, {out / 'curves.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
