"""MpeeRuntimeError: the one exception type of this package."""


class MpeeRuntimeError(Exception):
    """A user-facing error: bad bundle, bad argument. The message is one line naming the problem."""
