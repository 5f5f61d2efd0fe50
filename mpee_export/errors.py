"""The torch side's errors and how its commands report them (neutral: every subpackage may import it).

MpeeExportError: the one exception type of the torch side; a command turns it into exit code 2.
ParityError: a bundle that does not match PyTorch, the one failure with an exit code of its own (3),
whether the export or `mpee-export validate` finds it.
`MpeeCommand` (and the `UserErrors` mixin for groups): the one place the mapping to `Error:` lines and exit
codes is written, for the console scripts (mpee_export.cli) and `python -m mpee_export.baselines.bench_pytorch`
alike.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

import click

from mpee_runtime.errors import MpeeRuntimeError, io_error_line


class MpeeExportError(Exception):
    """A user-facing error: bad path, bad argument, bad checkpoint. The message is one line."""


class ParityError(MpeeExportError):
    """The bundle's fp32 graphs or chain disagree with PyTorch beyond the validation's tolerances."""

    exit_code = 3


USER_ERRORS = (MpeeExportError, MpeeRuntimeError)


class UserError(click.ClickException):
    exit_code = 2


class Interrupted(click.ClickException):
    """Ctrl-C: `Error: interrupted` and exit 130, as the runtime's commands (click's own is "Aborted!", 1)."""

    exit_code = 130


class Terminated(click.ClickException):
    """SIGTERM (a scheduler, `kill`, a container stopping): `Error: terminated` and exit 143 (128 + 15)."""

    exit_code = 143


class _SigTerm(BaseException):
    """Raised in the main thread by the SIGTERM handler, so that the command unwinds as on Ctrl-C."""


def _raise_sigterm(signum, frame) -> None:
    raise _SigTerm


@contextmanager
def sigterm_unwinds():
    """Within the block (main thread only), SIGTERM unwinds the command like Ctrl-C instead of killing the process
    silently: `finally` blocks run, atomic outputs leave nothing half-written, and mpee-train's last saved state
    stays resumable."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class UserErrors:
    """Mixin for click commands and groups: MpeeExportError / MpeeRuntimeError become one `Error:` line
    and exit code 2; Ctrl-C becomes `Error: interrupted` and exit code 130, SIGTERM `Error: terminated` and 143
    (outputs are written atomically: none is left half-written); an I/O failure of the machine (a full disk,
    `mpee_runtime.errors.io_error_line`) is one line and exit code 2. Anything else is a bug and keeps its
    traceback."""

    def invoke(self, ctx: click.Context):
        try:
            with sigterm_unwinds():
                return super().invoke(ctx)
        except USER_ERRORS as e:
            raise UserError(str(e)) from None
        except KeyboardInterrupt:
            raise Interrupted("interrupted") from None
        except _SigTerm:
            raise Terminated("terminated") from None
        except SystemExit as e:   # SIGTERM inside an AtomicFolder (mpee_runtime.files): cleaned up, then this
            if e.code == 128 + signal.SIGTERM:
                raise Terminated("terminated") from None
            raise
        except Exception as e:   # a full disk, a read-only file system: one line (the outputs are atomic)
            line = io_error_line(e)
            if line is None:
                raise
            raise UserError(line) from None


class MpeeCommand(UserErrors, click.Command):
    pass
