"""Typed, checked access to the fields of a JSON object (a manifest, a reference record): every refusal is one
MpeeRuntimeError line naming the field's path, its expected type or range, and what it holds."""

from __future__ import annotations

import math
import re
from typing import Any

from ..errors import MpeeRuntimeError
from .contract import MANIFEST

HEX64 = re.compile(r"[0-9a-f]{64}")


class Fields:
    """Typed access to one JSON object of the manifest; every refusal names the field's path."""

    def __init__(self, data: Any, where: str, file: str = MANIFEST) -> None:
        if not isinstance(data, dict):
            raise MpeeRuntimeError(f"{file}: {where} must be an object, got {type(data).__name__}")
        self.data, self.where, self.file = data, where, file

    def fail(self, key: str, what: str) -> MpeeRuntimeError:
        shown = repr(self.data[key]) if key in self.data else "nothing"
        return MpeeRuntimeError(f"{self.file}: {self.where}.{key} must be {what}, got {shown}"[:300])

    def get(self, key: str, optional: bool = False) -> Any:
        if key not in self.data:
            if optional:
                return None
            raise MpeeRuntimeError(f"{self.file}: missing field {self.where}.{key}")
        return self.data[key]

    def integer(self, key: str, *, lo: int | None = None, hi: int | None = None, optional: bool = False) -> int | None:
        v = self.get(key, optional)
        if v is None and optional:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or (lo is not None and v < lo) or (hi is not None and v > hi):
            bounds = (f" >= {lo}" if lo is not None else "") + (f" and <= {hi}" if hi is not None else "")
            raise self.fail(key, "an integer" + bounds)
        return v

    def number(self, key: str, *, lo: float, hi: float, lo_open: bool = False) -> float:
        v = self.get(key)
        ok = (not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
              and (v > lo if lo_open else v >= lo) and v <= hi)
        if not ok:
            raise self.fail(key, f"a number in {'(' if lo_open else '['}{lo}, {hi}]")
        return float(v)

    def flag(self, key: str) -> bool:
        v = self.get(key)
        if not isinstance(v, bool):
            raise self.fail(key, "true or false")
        return v

    def text(self, key: str, *, choices: tuple[str, ...] | None = None, optional: bool = False) -> str | None:
        v = self.get(key, optional)
        if v is None and optional:
            return None
        if not isinstance(v, str) or not v or (choices is not None and v not in choices):
            raise self.fail(key, f"one of {list(choices)}" if choices else "a non-empty string")
        return v

    def hex64(self, key: str) -> str:
        v = self.text(key)
        if not HEX64.fullmatch(v):
            raise self.fail(key, "64 lowercase hex digits")
        return v

    def items(self, key: str, item: type, *, what: str) -> list:
        v = self.get(key)
        if not isinstance(v, list) or not all(isinstance(x, item) and not isinstance(x, bool) for x in v):
            raise self.fail(key, f"a list of {what}")
        return list(v)

    def section(self, key: str, *, optional: bool = False) -> Fields | None:
        v = self.get(key, optional)
        return None if v is None and optional else Fields(v, f"{self.where}.{key}", self.file)
