"""The server's limits (`ServeSettings`): the flags of mpee-serve with their defaults, checked together."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from ..errors import MpeeRuntimeError
from .connections import ConnectionLimits


@dataclass(frozen=True)
class ServeSettings:
    """The server's limits (docs/serving.md "Protection"); the CLI's flags with their defaults."""

    max_batch: int = 16               # rows per backend call at most
    max_wait_ms: float = 5.0          # how long the oldest waiting row waits for its batch to fill
    max_queue: int = 256              # rows waiting at most; more: 503 with Retry-After
    max_inputs: int = 64              # rows per request at most; more: 413
    max_body_bytes: int = 1 << 20     # request body at most; more: 413
    max_text_chars: int = 100_000     # characters per text or pair at most; more: 413 (the engine cuts at max_chars)
    timeout_s: float = 30.0           # from queued to answered at most; later: 504 (and rows not started dropped)
    pad_slack: float = 0.25           # a batch runs in groups of similar length: padding at most this share
    max_held_bytes: int = 32 << 20    # request bodies held at once (read, queued or running); more: 503
    connections: ConnectionLimits = field(default_factory=ConnectionLimits)   # timeouts, head size, connections

    def to_dict(self) -> dict:
        return asdict(self)

    def check(self) -> None:
        """Refuse limits that cannot work, in one line naming the flag."""
        c = self.connections
        whole = {"--max-batch": self.max_batch, "--max-queue": self.max_queue, "--max-inputs": self.max_inputs,
                 "--max-body-bytes": self.max_body_bytes, "--max-text-chars": self.max_text_chars,
                 "--max-held-bytes": self.max_held_bytes, "--max-header-bytes": c.max_header_bytes,
                 "--max-headers": c.max_headers, "--max-connections": c.max_connections}
        for flag, value in whole.items():
            if value < 1:
                raise MpeeRuntimeError(f"{flag} must be >= 1, got {value}")
        for flag, seconds in (("--header-timeout-s", c.header_timeout_s), ("--body-timeout-s", c.body_timeout_s),
                              ("--keep-alive-s", c.keep_alive_s)):
            if not math.isfinite(seconds) or seconds <= 0:
                raise MpeeRuntimeError(f"{flag} must be a finite number > 0, got {seconds}")
        if not math.isfinite(self.max_wait_ms) or self.max_wait_ms < 0:
            raise MpeeRuntimeError(f"--max-wait-ms must be a finite number >= 0, got {self.max_wait_ms}")
        if not math.isfinite(self.pad_slack) or self.pad_slack < 0:
            raise MpeeRuntimeError(f"--pad-slack must be a finite number >= 0, got {self.pad_slack}")
        if not math.isfinite(self.timeout_s) or self.timeout_s <= 0:
            raise MpeeRuntimeError(f"--timeout-s must be a finite number > 0, got {self.timeout_s}")
        if self.max_inputs > self.max_queue:   # such a request could never be queued
            raise MpeeRuntimeError(f"--max-inputs ({self.max_inputs}) must be <= --max-queue ({self.max_queue})")
        if self.max_body_bytes > self.max_held_bytes:   # such a body could never be held
            raise MpeeRuntimeError(f"--max-body-bytes ({self.max_body_bytes}) must be <= --max-held-bytes "
                                   f"({self.max_held_bytes})")


DEFAULT_SETTINGS = ServeSettings()
