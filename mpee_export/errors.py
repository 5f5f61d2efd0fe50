"""MpeeExportError: the one exception type of the torch side; the CLI turns it into exit code 2.
ParityError: a bundle that does not match PyTorch, the one failure with an exit code of its own (3),
whether the export or `mpee-export validate` finds it."""

from mpee_runtime.errors import MpeeRuntimeError


class MpeeExportError(Exception):
    """A user-facing error: bad path, bad argument, bad checkpoint. The message is one line."""


class ParityError(MpeeExportError):
    """The bundle's fp32 graphs or chain disagree with PyTorch beyond the validation's tolerances."""

    exit_code = 3


USER_ERRORS = (MpeeExportError, MpeeRuntimeError)
