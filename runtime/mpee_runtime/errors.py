"""MpeeRuntimeError, the one exception type of this package, the one place it becomes exit code 2, and `shown`,
how a value a user gave appears in such a one-line message."""

from __future__ import annotations

import errno
import functools
import os
import sys
from collections.abc import Callable
from typing import Any

EXIT_INTERRUPTED = 130   # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C
EXIT_BROKEN_PIPE = 141   # 128 + SIGPIPE: the reader of stdout went away (`mpee-run ... | head`)


class MpeeRuntimeError(Exception):
    """A user-facing error: bad bundle, bad argument. The message is one line naming the problem."""


# What a full disk, a read-only or failing file system and missing permissions raise while a command writes: the
# machine's state, not a bug, so one line (`io_error_line`) rather than a traceback.
IO_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})


def io_error_line(e: BaseException) -> str | None:
    """The one line for an I/O failure of the machine (IO_ERRNOS, or safetensors' error for one), else None."""
    if isinstance(e, OSError) and e.errno in IO_ERRNOS:
        where = f"{e.filename}: " if e.filename else ""
        return f"{where}{e.strerror or e} (nothing was left half-written)"
    if type(e).__name__ == "SafetensorError" and any(os.strerror(n) in str(e) for n in IO_ERRNOS):
        return f"writing the weights failed: {str(e)[:200]} (nothing was left half-written)"
    return None


def exit_2_on_error(main: Callable[[list | None], int]) -> Callable[[list | None], int]:
    """Wrap a command's `main(argv) -> int`: an MpeeRuntimeError prints one `Error: ...` line on stderr and
    returns 2 (click's code for usage errors); Ctrl-C (KeyboardInterrupt) prints `Error: interrupted` and
    returns 130, outputs being written atomically (files.py) so none is left half-written; a closed stdout
    (BrokenPipeError) returns 141 silently, as a shell command killed by SIGPIPE; anything else is a bug and
    keeps its traceback, but an I/O failure of the machine (a full disk: `io_error_line`) is one line and 2."""
    @functools.wraps(main)
    def wrapper(argv: list | None = None) -> int:
        try:
            code = main(argv)
            sys.stdout.flush()   # a broken pipe shows here, not at the interpreter's exit
            return code
        except BrokenPipeError:
            # Python's documented remedy: point stdout at devnull so the exit's own flush cannot fail again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_BROKEN_PIPE
        except MpeeRuntimeError as e:
            print(f"Error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("Error: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except Exception as e:
            line = io_error_line(e)
            if line is None:
                raise
            print(f"Error: {line}", file=sys.stderr)
            return 2
    return wrapper


def shown(value: Any, limit: int = 60) -> str:
    """`value` for a one-line message: its repr (control characters escaped), cut to `limit` characters (a
    400-digit number from a request, a file name of control characters)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 4] + "...'"
