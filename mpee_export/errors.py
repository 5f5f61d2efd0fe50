"""The torch side's errors and how its commands report them (neutral: every subpackage may import it).

MpeeExportError: the one exception type of the torch side; a command turns it into exit code 2.
ParityError: a bundle that does not match PyTorch, the one failure with an exit code of its own (3),
whether the export or `mpee-export validate` finds it.
`MpeeCommand` (and the `UserErrors` mixin for groups): the one place the mapping to `Error:` lines and exit
codes is written, for the console scripts (mpee_export.cli) and `python -m mpee_export.baselines.bench_pytorch`
alike.
"""

from __future__ import annotations

import click

from mpee_runtime.errors import MpeeRuntimeError


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


class UserErrors:
    """Mixin for click commands and groups: MpeeExportError / MpeeRuntimeError become one `Error:` line
    and exit code 2; Ctrl-C becomes `Error: interrupted` and exit code 130 (outputs are written atomically:
    none is left half-written). Anything else is a bug and keeps its traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except USER_ERRORS as e:
            raise UserError(str(e)) from None
        except KeyboardInterrupt:
            raise Interrupted("interrupted") from None


class MpeeCommand(UserErrors, click.Command):
    pass
