"""Convert a dataset from its native layout to clip shards: ``python -m datamodules.convert source=<name> in=... out=...``.

Arguments are ``key=value`` (strict: an unknown key is an error that lists the valid ones):

    source=<name>         one of SOURCES (re10k, tartanair, matrixcity, dl3dv, dynamicreplica, pointodyssey, vkitti2,
                          spring, stereo4d); the module ``datamodules.sources.<name>`` is imported on use
    in=<native root>      the dataset as distributed (see each source module's docstring for the layout it expects)
    out=<shard dir>       where ``<split>-*.tar`` and ``manifest.json`` go; point it at ``$DATA_ROOT/shards/<name>``
    split=train clip_length=49 stride=1 clip_step=0 max_side=0 max_clips=0 frame_format=jpg jpeg_quality=95
                          the fields of `datamodules.sources.base.ConvertOptions`
    max_sequences=0       convert only the first N sequences (sorted ids; 0 = all)
    sequences=a,b*        only sequences whose id matches one of these comma-separated fnmatch patterns
    workers=1             processes; each writes its own shard stream ``<split>-p<part:03d>-<index:06d>.tar``
    maxcount=64 maxsize_mb=1024
                          clips / megabytes per shard at most
    <source option>=...   options a source declares in its module-level ``OPTIONS`` (e.g. tartanair ``camera=both``)

Source options: a module may declare ``OPTIONS = {name: default}``; a tuple default lists the allowed strings (the first
is the default). Values are parsed by the default's type and reach the converter as ``opts.source_options[name]``.

Resuming: the output folder's manifest lists the keys of every finished shard of the split; they are handed to the
converters as ``opts.done_keys`` (converters that check it skip loading those clips) and are never written again,
whatever part wrote them. Unfinished shards of a killed run are deleted by the writer and their clips redone.

Bad input: a `SourceError` (or a schema violation, or any other exception) in one sequence is reported with the file
and message and the other sequences still convert; clips of that sequence written before the error are kept. The final
summary lists clips, frames and sequences, and every failed sequence with its reason. Exit code: 0 when at least one
sequence converted (or was already done), 1 when none did (or none was found), 2 for a usage error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import importlib
import multiprocessing as mp
import queue
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datamodules.sources.base import ConvertOptions, SourceError
from datamodules.spec import SpecError
from datamodules.write import ShardWriter, read_manifest

SOURCES = (
    "re10k",
    "tartanair",
    "matrixcity",
    "dl3dv",
    "dynamicreplica",
    "pointodyssey",
    "vkitti2",
    "spring",
    "stereo4d",
)

_CLI_DEFAULTS: dict[str, Any] = {
    "source": None,
    "in": None,
    "out": None,
    "max_sequences": 0,
    "sequences": "",
    "workers": 1,
    "maxcount": 64,
    "maxsize_mb": 1024,
}
_OPTION_FIELDS = tuple(f.name for f in dataclasses.fields(ConvertOptions))


class UsageError(ValueError):
    """A bad command line (unknown key, bad value, unknown source)."""


@dataclass
class SequenceResult:
    """Outcome of one sequence: clips/frames written; ``error`` = (kind, file, message) when it failed."""

    sequence: str
    clips: int = 0
    frames: int = 0
    skipped: int = 0  # clips yielded whose key was already done
    error: tuple[str, str, str] | None = None
    seconds: float = 0.0


@dataclass
class Summary:
    """What one run did; ``failed`` maps sequence -> reason."""

    source: str
    split: str
    out: str
    sequences: int = 0
    converted: int = 0
    clips: int = 0
    frames: int = 0
    skipped_clips: int = 0  # clips a converter yielded although their key was done
    clips_before: int = 0  # clips of the split in the manifest when the run started
    failed: dict[str, str] = field(default_factory=dict)
    clips_in_manifest: int = 0
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return 0 if self.converted > 0 else 1


# ------------------------------------------------------------------------------------------------------ arguments


def load_source(name: str):
    """Import ``datamodules.sources.<name>``; a name outside SOURCES or a module not written yet is a `UsageError`."""
    if name not in SOURCES:
        raise UsageError(f"unknown source {name!r}; known sources: {', '.join(SOURCES)}")
    try:
        module = importlib.import_module(f"datamodules.sources.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"datamodules.sources.{name}":
            raise UsageError(f"source {name!r} has no converter yet (datamodules/sources/{name}.py is missing)") from e
        raise
    for attr in ("NAME", "list_sequences", "convert_sequence"):
        if not hasattr(module, attr):
            raise UsageError(f"datamodules.sources.{name} does not implement the converter interface (no {attr})")
    return module


def _parse_value(key: str, text: str, default: Any) -> Any:
    if isinstance(default, tuple):
        if text not in default:
            raise UsageError(f"{key}={text!r}: expected one of {', '.join(default)}")
        return text
    if isinstance(default, bool):
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise UsageError(f"{key}={text!r}: expected true or false")
    if isinstance(default, int):
        try:
            return int(text)
        except ValueError:
            raise UsageError(f"{key}={text!r}: expected an integer") from None
    if isinstance(default, float):
        try:
            return float(text)
        except ValueError:
            raise UsageError(f"{key}={text!r}: expected a number") from None
    return text


def parse_args(argv: list[str]) -> tuple[dict[str, Any], ConvertOptions, Any]:
    """``key=value`` arguments -> (CLI settings, options, source module). Raises `UsageError`."""
    pairs: dict[str, str] = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise UsageError(f"argument {arg!r} is not key=value")
        if key in pairs:
            raise UsageError(f"{key} given twice")
        pairs[key] = value
    if "source" not in pairs:
        raise UsageError(f"source=<name> is required; known sources: {', '.join(SOURCES)}")
    module = load_source(pairs["source"])
    source_defaults: dict[str, Any] = dict(getattr(module, "OPTIONS", {}))
    clash = set(source_defaults) & (set(_CLI_DEFAULTS) | set(_OPTION_FIELDS))
    if clash:
        raise UsageError(f"source {module.NAME} declares options that shadow CLI keys: {sorted(clash)}")
    valid = [*_CLI_DEFAULTS, *_OPTION_FIELDS, *source_defaults]
    unknown = [k for k in pairs if k not in valid]
    if unknown:
        raise UsageError(f"unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(valid)}")

    cli = dict(_CLI_DEFAULTS)
    opt_kw: dict[str, Any] = {}
    src_opts = {k: (v[0] if isinstance(v, tuple) else v) for k, v in source_defaults.items()}
    base = ConvertOptions()
    for key, text in pairs.items():
        if key in ("source", "in", "out", "sequences"):
            cli[key] = text
        elif key in _CLI_DEFAULTS:
            cli[key] = _parse_value(key, text, _CLI_DEFAULTS[key])
        elif key in _OPTION_FIELDS:
            opt_kw[key] = _parse_value(key, text, getattr(base, key))
        else:
            src_opts[key] = _parse_value(key, text, source_defaults[key])
    for key in ("in", "out"):
        if not cli[key]:
            raise UsageError(f"{key}=<path> is required")
    if not Path(cli["in"]).is_dir():
        raise UsageError(f"in={cli['in']}: not a directory")
    opts = ConvertOptions(**opt_kw, source_options=src_opts)
    if opts.frame_format not in ("jpg", "png"):
        raise UsageError(f"frame_format={opts.frame_format!r}: expected jpg or png")
    for key in ("clip_length", "stride", "workers", "maxcount", "maxsize_mb"):
        value = cli[key] if key in cli else getattr(opts, key)
        if value < 1:
            raise UsageError(f"{key}={value}: must be >= 1")
    for key in ("clip_step", "max_side", "max_clips"):
        if getattr(opts, key) < 0:
            raise UsageError(f"{key}={getattr(opts, key)}: must be >= 0")
    return cli, opts, module


def select_sequences(module, root: Path, split: str, patterns: str, max_sequences: int) -> list[str]:
    """The sequence ids to convert: the source's list, filtered by fnmatch ``patterns`` and cut to ``max_sequences``."""
    seqs = list(module.list_sequences(root, split))
    pats = [p for p in patterns.split(",") if p]
    if pats:
        seqs = [s for s in seqs if any(fnmatch.fnmatchcase(s, p) for p in pats)]
    return seqs[:max_sequences] if max_sequences > 0 else seqs


# ------------------------------------------------------------------------------------------------------ converting


def _done_keys(out: Path, split: str) -> frozenset[str]:
    return frozenset(k for s in read_manifest(out)["shards"] if s["split"] == split for k in s["keys"])


def convert_one(module, root: Path, sequence: str, opts: ConvertOptions, writer: ShardWriter) -> SequenceResult:
    """Convert one sequence into ``writer``; every failure becomes ``result.error`` instead of an exception."""
    res = SequenceResult(sequence)
    t0 = time.perf_counter()
    clips: Iterator = iter(())
    try:
        clips = module.convert_sequence(root, sequence, opts)
        for clip in clips:
            if clip.key in opts.done_keys or writer.is_done(clip.key):
                res.skipped += 1
                continue
            writer.write(clip)
            res.clips += 1
            res.frames += clip.num_frames
    except SourceError as e:
        res.error = ("bad input", e.file, e.message)
    except SpecError as e:
        res.error = ("schema", e.key, str(e))
    except Exception as e:  # noqa: BLE001 - one converter bug must not stop the other sequences
        tb = traceback.extract_tb(e.__traceback__)[-1]
        res.error = ("error", f"{tb.filename}:{tb.lineno}", f"{type(e).__name__}: {e}")
    finally:
        close = getattr(clips, "close", None)
        if close is not None:
            close()
    res.seconds = time.perf_counter() - t0
    return res


def _writer(out: Path, module, root: Path, opts: ConvertOptions, cli: dict[str, Any], part: int | None) -> ShardWriter:
    return ShardWriter(
        out,
        source=f"datamodules.convert source={module.NAME} in={root} split={opts.split}",
        split=opts.split,
        maxcount=cli["maxcount"],
        maxsize=cli["maxsize_mb"] << 20,
        part=part,
    )


def _worker(part: int, source: str, root: Path, out: Path, opts: ConvertOptions, cli: dict, tasks, results) -> None:
    module = load_source(source)
    with _writer(out, module, root, opts, cli, part) as writer:
        while (sequence := tasks.get()) is not None:
            results.put(("start", part, sequence))
            results.put(("done", part, convert_one(module, root, sequence, opts, writer)))


def _run_parallel(module, root, out, opts, cli, sequences, on_result) -> None:
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    tasks, results = ctx.Queue(), ctx.Queue()
    for s in sequences:
        tasks.put(s)
    n = min(cli["workers"], len(sequences))
    for _ in range(n):
        tasks.put(None)
    procs = [
        ctx.Process(target=_worker, args=(i, module.NAME, root, out, opts, cli, tasks, results), daemon=False)
        for i in range(n)
    ]
    for p in procs:
        p.start()
    current: dict[int, str | None] = dict.fromkeys(range(n))
    pending = set(sequences)
    while pending:
        try:
            kind, part, payload = results.get(timeout=0.5)
        except queue.Empty:
            for i, p in enumerate(procs):
                if not p.is_alive() and p.exitcode not in (0, None) and current[i] is not None:
                    seq, current[i] = current[i], None
                    pending.discard(seq)
                    on_result(SequenceResult(seq, error=("crash", seq, f"worker process died (exit {p.exitcode})")))
            if all(not p.is_alive() for p in procs) and results.empty():
                for seq in sorted(pending):
                    on_result(SequenceResult(seq, error=("crash", seq, "not converted: every worker process exited")))
                pending.clear()
            continue
        if kind == "start":
            current[part] = payload
        else:
            current[part] = None
            pending.discard(payload.sequence)
            on_result(payload)
    for p in procs:
        p.join()


def run(cli: dict[str, Any], opts: ConvertOptions, module, progress: bool = True) -> Summary:
    """Convert every selected sequence of ``cli['in']`` into ``cli['out']``; returns the `Summary`."""
    root, out = Path(cli["in"]), Path(cli["out"])
    made = [p for p in (out, *out.parents) if not p.exists()]
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _run(cli, opts, module, progress, root, out)
    finally:
        if made and not any(out.iterdir()):  # nothing converted: leave no empty output folder behind
            for p in made:  # deepest first
                with contextlib.suppress(OSError):
                    p.rmdir()


def _run(cli: dict[str, Any], opts: ConvertOptions, module, progress: bool, root: Path, out: Path) -> Summary:
    t0 = time.perf_counter()
    summary = Summary(source=module.NAME, split=opts.split, out=str(out))
    sequences = select_sequences(module, root, opts.split, cli["sequences"], cli["max_sequences"])
    summary.sequences = len(sequences)
    opts = dataclasses.replace(opts, done_keys=_done_keys(out, opts.split))
    summary.clips_before = len(opts.done_keys)

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("clips {task.fields[clips]}  failed {task.fields[failed]}"),
        TimeElapsedColumn(),
        disable=not progress,
    )
    task = bar.add_task(f"{module.NAME}/{opts.split}", total=len(sequences), clips=0, failed=0)

    def on_result(r: SequenceResult) -> None:
        summary.clips += r.clips
        summary.frames += r.frames
        summary.skipped_clips += r.skipped
        if r.error is None:
            summary.converted += 1
        else:
            kind, file, message = r.error
            summary.failed[r.sequence] = f"{kind}: {file}: {message}"
        bar.update(task, advance=1, clips=summary.clips, failed=len(summary.failed))

    if cli["workers"] > 1 and len(sequences) > 1:
        # Workers are started before the progress display, whose refresh thread must not be forked.
        bar.start()
        try:
            _run_parallel(module, root, out, opts, cli, sequences, on_result)
        finally:
            bar.stop()
    elif sequences:
        with bar, _writer(out, module, root, opts, cli, None) as writer:
            for s in sequences:
                on_result(convert_one(module, root, s, opts, writer))
    summary.clips_in_manifest = len(_done_keys(out, opts.split))
    summary.seconds = time.perf_counter() - t0
    return summary


def print_summary(s: Summary, file=None) -> None:
    """The final report: counts, then one line per failed sequence with its reason."""
    from rich.console import Console

    console = Console(file=file or sys.stdout, highlight=False, soft_wrap=True)
    console.print(
        f"[bold]{s.source}[/bold] split={s.split} -> {s.out}: {s.converted}/{s.sequences} sequences converted, "
        f"{s.clips} clips ({s.frames} frames) written, {s.clips_before} were already there, "
        f"{s.clips_in_manifest} clips in the manifest, {len(s.failed)} sequences skipped, {s.seconds:.1f} s"
    )
    if s.sequences == 0:
        console.print("  no sequences found (check in= and split=)")
    for seq, reason in sorted(s.failed.items()):
        console.print(f"  skipped {seq}: {reason}", markup=False)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help", "help") for a in argv):
        print(__doc__)
        return 0
    try:
        cli, opts, module = parse_args(argv)
        summary = run(cli, opts, module, progress=sys.stderr.isatty())
    except UsageError as e:
        print(f"datamodules.convert: {e}", file=sys.stderr)
        return 2
    except SourceError as e:  # list_sequences found no usable layout: bad input
        print(f"datamodules.convert: {e}", file=sys.stderr)
        return 2
    print_summary(summary)
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main())
