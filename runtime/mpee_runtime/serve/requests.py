"""Parsing and checking a `POST /v1/classify` body into a `ClassifyRequest`: each refusal names its field (400),
or the limit it is over (413)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..core.policy import POLICIES
from .backends import FieldError, Knobs, Row
from .settings import ServeSettings

TOP_FIELDS = ("text", "text_pair", "inputs", "threshold", "keep_ratio", "policy")


ROW_FIELDS = ("text", "text_pair")


class TooLarge(FieldError):
    """A request over a size limit (HTTP 413); `field` names what is too large (body, inputs, a text)."""


@dataclass(frozen=True)
class ClassifyRequest:
    """A parsed `POST /v1/classify` body: its rows, its knobs, and whether it was one text (`{"text": ...}`,
    answered by one object) or a list (`{"inputs": [...]}`, answered by `{"predictions": [...]}`)."""

    rows: list[Row]
    knobs: Knobs
    single: bool


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")   # Python's json reads NaN and Infinity; JSON has neither


def _load_json(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_refuse_constant)
    except UnicodeDecodeError as e:
        raise FieldError("body", f"not UTF-8 (byte {e.start}: {e.reason})") from None
    except (ValueError, RecursionError) as e:   # JSONDecodeError is a ValueError; RecursionError: deep nesting
        raise FieldError("body", f"not valid JSON ({str(e)[:120]})") from None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number" if _number(value) else type(value).__name__)


def _text(value: Any, where: str, settings: ServeSettings, optional: bool = False) -> str | None:
    """A text field: a string (or null/absent when optional), valid Unicode, at most max_text_chars."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise FieldError(where, f"must be a string, got {_type_name(value)}")
    if len(value) > settings.max_text_chars:
        raise TooLarge(where, f"{len(value)} characters, at most {settings.max_text_chars}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:   # JSON's \\ud800 escapes give lone surrogates, which the tokenizer refuses
        raise FieldError(where, "not valid Unicode (it holds a lone surrogate)") from None
    return value


def _check_keys(obj: dict, allowed: tuple[str, ...], where: str) -> None:
    for key in obj:
        if key not in allowed:
            raise FieldError(f"{where}{key}", f"unknown field (allowed: {', '.join(allowed)})")


def _rows(data: dict, settings: ServeSettings) -> tuple[list[Row], bool]:
    """The request's rows, and whether it was a single text; exactly one of text and inputs."""
    if ("text" in data) == ("inputs" in data):
        raise FieldError("text", "give either text (one input) or inputs (a list of {text, text_pair})")
    if "text" in data:
        return [Row(_text(data["text"], "text", settings), _text(data.get("text_pair"), "text_pair", settings,
                                                                 optional=True))], True
    if "text_pair" in data:
        raise FieldError("text_pair", "with inputs, each input has its own text_pair")
    inputs = data["inputs"]
    if not isinstance(inputs, list) or not inputs:
        raise FieldError("inputs", f"must be a non-empty array of {{text, text_pair}} objects, got "
                         f"{'an empty array' if isinstance(inputs, list) else _type_name(inputs)}")
    if len(inputs) > settings.max_inputs:
        raise TooLarge("inputs", f"{len(inputs)} inputs, at most {settings.max_inputs} per request")
    rows = []
    for i, item in enumerate(inputs):
        where = f"inputs[{i}]"
        if not isinstance(item, dict):
            raise FieldError(where, f"must be an object {{text, text_pair}}, got {_type_name(item)}")
        _check_keys(item, ROW_FIELDS, where + ".")
        if "text" not in item:
            raise FieldError(where + ".text", "missing")
        rows.append(Row(_text(item["text"], where + ".text", settings),
                        _text(item.get("text_pair"), where + ".text_pair", settings, optional=True)))
    return rows, False


def _knobs(data: dict) -> Knobs:
    """The knobs' JSON types (null: the bundle's value); their ranges are the backend's check."""
    threshold, ratio, policy = data.get("threshold"), data.get("keep_ratio"), data.get("policy")
    if threshold is not None and not _number(threshold):
        raise FieldError("threshold", f"must be a number, got {_type_name(threshold)}")
    if isinstance(ratio, list):
        if not ratio or not all(_number(r) for r in ratio):
            raise FieldError("keep_ratio", "a schedule is a non-empty array of numbers, one per pruning layer")
        ratio = tuple(ratio)
    elif ratio is not None and not _number(ratio):
        raise FieldError("keep_ratio", f"must be a number or an array of numbers, got {_type_name(ratio)}")
    if policy is not None and not isinstance(policy, str):
        raise FieldError("policy", f"must be a string, one of {', '.join(POLICIES)}; got {_type_name(policy)}")
    return Knobs(threshold, ratio, policy)


def parse_classify(body: bytes, settings: ServeSettings, backend) -> ClassifyRequest:
    """Parse and check a classify body: `{"text": T, "text_pair"?: P}` or `{"inputs": [{"text": T,
    "text_pair"?: P}, ...]}`, each with optional `threshold`, `keep_ratio` (a number, or one per pruning
    layer) and `policy`, checked by the backend as mpee-run checks them. Raises FieldError (400) or TooLarge
    (413), each naming the field; unknown fields are refused, so a misspelt knob is not silently ignored."""
    data = _load_json(body)
    if not isinstance(data, dict):
        raise FieldError("body", f"must be a JSON object with text or inputs, got {_type_name(data)}")
    _check_keys(data, TOP_FIELDS, "")
    rows, single = _rows(data, settings)
    knobs = _knobs(data)
    backend.check_knobs(knobs)
    return ClassifyRequest(rows, knobs, single)
