"""Atomic writes: a file or a folder appears complete under its name or not at all.

Everything the project writes (checkpoints, weights, scenes, shards, manifests, caches, output folders) goes through
`atomic_file` (one file), `atomic_files` (a set) or `atomic_dir`: the content is written under a hidden temporary name
in the destination's own folder (a rename across disks would be a copy), flushed to disk, given the usual permissions
(``0666 & ~umask``; temporary files are made ``0600``) and renamed onto the destination. A failure (an exception, a
full disk, a signal) removes the temporary entry and leaves what was there before untouched. A folder that replaces
an existing one takes two renames (the old one aside, the new one in place); `recover_interrupted_replace` restores
the old one if a kill falls between them. A file written inside an `atomic_dir`'s temporary folder is not flushed on
its own: the folder flushes everything in it once, before its rename, so nothing is visible before it is durable and
the writers (a generation's scene, ply frames, videos) do not each wait for the disk.

Signals: under `cleanup_on_signals` (every CLI's `diff4splat.cli.run_cli`) SIGTERM, like Ctrl-C, raises `Interrupted` in
the main thread, so the writers' cleanup runs before the process exits. A kill that cannot be caught (SIGKILL, the
OOM killer) leaves the temporary folder; its name records the owner (``.<name>.tmp-<pid>@<host>-<random>``), and the
next `atomic_dir` for the same destination removes it once that process is gone (`remove_stale_temp_dirs`).
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = [
    "Interrupted",
    "atomic_dir",
    "atomic_file",
    "atomic_files",
    "atomic_write_bytes",
    "atomic_write_text",
    "cleanup_on_signals",
    "fsync_dir",
    "fsync_tree",
    "recover_interrupted_replace",
    "remove_path",
    "remove_stale_temp_dirs",
    "replace_path",
]

log = logging.getLogger(__name__)

_FOLDERS_FLUSHED_WHOLE: set[Path] = set()  # atomic_dir temporary folders: flushed as a whole before their rename
_FOLDERS_LOCK = threading.Lock()


def _flushed_with_its_folder(path: Path) -> bool:
    """Whether ``path`` lies in an `atomic_dir` temporary folder (which flushes all its files before the rename)."""
    with _FOLDERS_LOCK:
        return any(folder in path.parents for folder in _FOLDERS_FLUSHED_WHOLE)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(folder: str | os.PathLike) -> None:
    """Persist the entries (renames) of a folder; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(path: str | os.PathLike) -> None:
    """Flush a file, or every file of a folder and the folders themselves, to disk."""
    path = Path(path)
    if path.is_dir():
        for child in path.rglob("*"):
            if child.is_file():
                with open(child, "rb") as f:
                    os.fsync(f.fileno())
            elif child.is_dir():
                fsync_dir(child)
        fsync_dir(path)
    else:
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    fsync_dir(path.parent)


def _set_usual_permissions(path: Path, umask: int) -> None:
    if path.is_dir():
        for p in path.rglob("*"):
            if p.is_file() and not p.is_symlink():
                p.chmod(0o666 & ~umask)
    elif path.is_file():
        path.chmod(0o666 & ~umask)


def remove_path(path: str | os.PathLike) -> None:
    """Remove a file, a link or a whole folder; nothing when absent."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def _aside_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def replace_path(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Move the complete ``tmp`` (file or folder) onto ``path``: one atomic rename for a file over a file (or over
    nothing); otherwise the old entry is renamed aside first and removed once the new one is in place."""
    tmp, path = Path(tmp), Path(path)
    if tmp.is_file() and (path.is_file() or not (path.exists() or path.is_symlink())):
        os.replace(tmp, path)
    else:
        aside = _aside_name(path)
        remove_path(aside)
        if path.exists() or path.is_symlink():
            os.replace(path, aside)
        os.replace(tmp, path)
        fsync_dir(path.parent)
        remove_path(aside)
    fsync_dir(path.parent)


def recover_interrupted_replace(path: str | os.PathLike) -> None:
    """If a `replace_path` was killed between its renames (``path`` missing, the old version aside), restore it."""
    path = Path(path)
    aside = _aside_name(path)
    if not path.exists() and aside.exists():
        try:
            os.replace(aside, path)
            log.warning("restored %s from %s (a replacement was interrupted)", path, aside.name)
        except FileNotFoundError:  # another process restored it first
            pass


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, fsync: bool = True, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside ``path`` to write one file to; renamed onto ``path`` when the block succeeds, removed
    when it fails. Parent folders are created. ``fsync=False`` skips the flush (caches that can be rebuilt; inside an
    `atomic_dir` the folder's own flush covers it); ``suffix`` ends the temporary name, for writers that choose by it
    (``np.savez`` appends ``.npz`` to any other)."""
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _set_usual_permissions(tmp, _umask())
        if fsync and not _flushed_with_its_folder(tmp):
            fsync_tree(tmp)
        replace_path(tmp, path)
    except BaseException:
        remove_path(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (see `atomic_file`)."""
    with atomic_file(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, fsync: bool = True) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see `atomic_file`)."""
    return atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


@contextlib.contextmanager
def _parents_made(folder: Path) -> Iterator[None]:
    """Create ``folder`` and its missing parents; if the block fails, remove the ones this made (when empty)."""
    made = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for p in made:  # deepest first
            with contextlib.suppress(OSError):
                p.rmdir()
        raise


@contextlib.contextmanager
def atomic_files(paths: Iterable[str | os.PathLike], fsync: bool = True) -> Iterator[list[Path]]:
    """Temporary paths beside each of ``paths`` (see `atomic_file`) to write a set of files to: each is renamed into
    place only once the block has written them all, so a failure leaves every old file as it was; on failure the
    temporary files are removed, with any parent folders this made."""
    paths = [Path(p).absolute() for p in paths]
    with contextlib.ExitStack() as stack:
        for folder in sorted({p.parent for p in paths}):
            stack.enter_context(_parents_made(folder))
        yield [stack.enter_context(atomic_file(p, fsync=fsync)) for p in paths]


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:64] or "localhost"


# .<name>.tmp-<pid>@<host>-<8 characters of tempfile's random suffix>
_TEMP_DIR = re.compile(r"\.(?P<name>.+)\.tmp-(?P<pid>\d+)@(?P<host>.+)-[a-z0-9_]{8}")


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temp_dirs(target: str | os.PathLike) -> list[Path]:
    """Remove the temporary folders `atomic_dir` left beside ``target`` for runs that were killed without a chance to
    clean up (SIGKILL, the OOM killer): only folders named as `atomic_dir` names them for ``target``, made on this
    host by a process that no longer exists. A live run's folder, another host's and any other entry are left alone.
    Returns the folders removed."""
    target = Path(target).absolute()
    if not target.parent.is_dir():
        return []
    removed = []
    host = _host()
    for entry in target.parent.glob(f".{glob.escape(target.name)}.tmp-*"):
        m = _TEMP_DIR.fullmatch(entry.name)
        if not (m and m["name"] == target.name and m["host"] == host and entry.is_dir() and not entry.is_symlink()):
            continue
        pid = int(m["pid"])
        if pid == os.getpid() or _process_exists(pid):
            continue
        remove_path(entry)
        removed.append(entry)
        log.warning("removed %s: the unfinished output of a run (pid %d) that was killed", entry, pid)
    return removed


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, fsync: bool = True) -> Iterator[Path]:
    """A fresh temporary folder beside ``target`` to fill; it replaces ``target`` (as a whole, whatever was there)
    when the block succeeds and is removed, with any parent folders this made, when it fails. Callers decide
    beforehand whether an existing ``target`` may be replaced. The folder's name records this process
    (``.<name>.tmp-<pid>@<host>-<random>``); temporary folders of killed runs for the same ``target`` are removed
    first (`remove_stale_temp_dirs`)."""
    target = Path(target).absolute()
    remove_stale_temp_dirs(target)
    with _parents_made(target.parent):
        prefix = f".{target.name}.tmp-{os.getpid()}@{_host()}-"
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
        if fsync:
            with _FOLDERS_LOCK:
                _FOLDERS_FLUSHED_WHOLE.add(tmp)
        try:
            yield tmp
            _set_usual_permissions(tmp, _umask())
            tmp.chmod(0o777 & ~_umask())
            if fsync:
                fsync_tree(tmp)
            replace_path(tmp, target)
        except BaseException:
            remove_path(tmp)
            raise
        finally:
            with _FOLDERS_LOCK:
                _FOLDERS_FLUSHED_WHOLE.discard(tmp)


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT under `cleanup_on_signals`. A `KeyboardInterrupt`, so everything that handles Ctrl-C (servers
    that shut down, ``except BaseException`` cleanups) treats a SIGTERM the same way."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


@contextlib.contextmanager
def cleanup_on_signals(signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> Iterator[None]:
    """While the block runs, the first of ``signals`` raises `Interrupted` in the main thread, so the atomic writers
    remove their temporary files and folders as the exception unwinds; later signals are ignored until the block has
    exited, so a second Ctrl-C cannot cut that cleanup short. The previous handlers come back afterwards. Outside
    the main thread (where handlers cannot be set) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised: list[int] = []

    def handler(signum: int, frame: object) -> None:
        if not raised:
            raised.append(signum)
            raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
