"""Command-line plumbing shared by every entry point: the bad-input error and the driver that turns errors into one
``error:`` line and an exit status (2 for bad input or usage, 1 for a failure of the machine, 128 + the signal's
number when SIGTERM or SIGINT stopped it)."""

from __future__ import annotations

import errno
import logging
import signal
import sys
from collections.abc import Callable
from typing import Any


class InputError(ValueError):
    """Bad user input: names the file and the field."""


# Errors of the machine rather than of the input: a full disk or quota, a read-only or forbidden output place.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def run_cli(run: Callable[[Any], Any], args: Any, log: bool = False) -> int:
    """Run a CLI's ``run(args)``; bad input prints one ``error: ...`` line to stderr and returns exit code 2; a full
    disk (or a read-only / forbidden output place) or too little memory prints one ``error: ...`` line and returns 1;
    SIGTERM or SIGINT stops it with one line and 128 + the signal's number, after the writers removed their
    temporary files (`diff4splat.files.cleanup_on_signals`). The writers leave no partial output either way. ``log``:
    the run's INFO messages go to stderr as plain lines."""
    from diff4splat.files import Interrupted, cleanup_on_signals

    if log:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        with cleanup_on_signals():
            result = run(args)
    except KeyboardInterrupt as e:
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        print(f"error: stopped by {signal.Signals(signum).name}; nothing partial was left", file=sys.stderr)
        return 128 + signum
    except (MemoryError, RuntimeError) as e:  # torch.OutOfMemoryError is a RuntimeError
        if not isinstance(e, MemoryError) and type(e).__name__ != "OutOfMemoryError":
            raise
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"error: out of memory ({first}); nothing partial was left", file=sys.stderr)
        return 1
    except (InputError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in _WRITE_ERRNOS:
            raise
        where = f"{e.filename}: " if e.filename else ""
        full = " (the disk is full; nothing partial was left)" if e.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        print(f"error: {where}{e.strerror or e}{full}", file=sys.stderr)
        return 1
    if result is not None:
        print(result)
    return 0
