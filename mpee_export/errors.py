"""MpeeExportError: the one exception type of the torch side; the CLI turns it into exit code 2."""

from mpee_runtime.errors import MpeeRuntimeError


class MpeeExportError(Exception):
    """A user-facing error: bad path, bad argument, bad checkpoint. The message is one line."""


USER_ERRORS = (MpeeExportError, MpeeRuntimeError)
