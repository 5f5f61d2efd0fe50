"""The manifest's integrity record and the file-name checks, on the tiny bundle (no torch needed).

Rule: any edit of manifest.json not made by the exporter's publish step (`Manifest.dump`) is refused by
`Manifest.load` with one MpeeRuntimeError line, before any session exists; a file name from the manifest
is checked before the file system sees it. The re-hashed substitutions of graphs and tokenizers need a
second bundle and live in tests/export/test_integrity_export.py.
"""

from __future__ import annotations

import copy
import json
import math
import random
from collections import Counter
from pathlib import Path

import onnxruntime as ort
import pytest

from mpee_runtime.bundle.contract import MANIFEST
from mpee_runtime.bundle.integrity import canonical_json, check_integrity, digest_of, seal
from mpee_runtime.bundle.manifest import Manifest
from mpee_runtime.cli.run import main as run_cli
from mpee_runtime.core.engine import MpeeEngine
from mpee_runtime.errors import MpeeRuntimeError

SEED, EDITS = 21, 300


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / MANIFEST).read_text())


def _no_sessions(monkeypatch) -> None:
    def no_session(*a, **k):
        raise AssertionError("a session was created before the manifest was refused")
    monkeypatch.setattr(ort, "InferenceSession", no_session)


def _refusal(bundle: Path) -> str:
    """The one-line message MpeeEngine refuses `bundle` with."""
    with pytest.raises(MpeeRuntimeError) as e:
        MpeeEngine(bundle, threads=1, warmup=0)
    message = str(e.value)
    assert "\n" not in message and "\r" not in message and len(message) < 400, message
    return message


# ---------------------------------------------------------------- the fuzz over manifest edits
def _paths(value, prefix=()) -> list[tuple]:
    """Every key path inside a JSON value (the value itself excluded)."""
    out = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        out.append(prefix + (k,))
        out += _paths(v, prefix + (k,))
    return out


def _at(data, path):
    for k in path:
        data = data[k]
    return data


def _new_number(rng: random.Random, v):
    return rng.choice([v + 1, v - 1, -v - 1, v * 2 + 1, 7, 1e9, 1e30, 0.5, 1, 0, math.inf, float(v) + 0.25,
                       str(v), None])


def _new_string(rng: random.Random, v: str):
    return rng.choice([v + "x", "", v.upper() + "!", v[::-1] + "z", "a" * 1_000_000, "fp32", "int8", 3, None])


def _edit(rng: random.Random, data: dict, path: tuple | None = None) -> str:
    """One random edit of `data` in place (at `path` when given); returns its kind."""
    paths = _paths(data)
    path = path or rng.choice(paths)
    parent, key = _at(data, path[:-1]), path[-1]
    value = parent[key]
    kind = rng.choice(["value", "value", "value", "delete", "add"])
    if kind == "delete":
        del parent[key]
        return "delete key" if isinstance(parent, dict) else "delete list item"
    if kind == "add":
        target = value if isinstance(value, (dict, list)) else parent
        extra = rng.choice([0, 1.5, "x", True, None, [], {}])
        if isinstance(target, dict):
            target[f"extra_{rng.randrange(1000)}"] = extra
            return "add key"
        target.insert(rng.randrange(len(target) + 1), extra)
        return "add list item"
    if isinstance(value, bool):
        parent[key] = rng.choice([not value, int(value), str(value).lower()])
        return "bool"
    if isinstance(value, (int, float)):
        parent[key] = _new_number(rng, value)
        return "number"
    if isinstance(value, str):
        parent[key] = _new_string(rng, value)
        return "string"
    if isinstance(value, list):
        if value and rng.random() < 0.5:
            value[rng.randrange(len(value))] = rng.choice([0, 0.5, 1, "x", None, True])
            return "list item"
        parent[key] = rng.choice([value[::-1] + [0], [], {}, None, "[]"])
        return "list"
    if isinstance(value, dict):
        parent[key] = rng.choice([[], {}, None, 0, "{}"])
        return "object"
    parent[key] = rng.choice([0, "", False, [], {}])   # null
    return "null"


# The edits of the hostile run that ran with exit 0 before the integrity record.
KNOWN_EDITS = [(("exit", "default_threshold"), 7), (("exit", "default_threshold"), 1e9),
               (("pruning", "keep_ratios", 0), 0.5), (("model", "labels", 0), "x" * 1_000_000),
               (("model", "num_heads"), 1e30), (("pruning", "betas", 2), 1),
               (("validation", "checks", "fp32", "graph_max_abs_diff"), math.inf),
               (("validation", "checks", "fp32", "chain_same_label"), 1e9)]


def test_every_manifest_edit_is_refused(bundle, monkeypatch):
    """EDITS random edits (fixed seed) anywhere in the JSON, every tenth in validation.checks and every
    tenth at exit.default_threshold, plus the known ones: each refused in one line, no session created."""
    _no_sessions(monkeypatch)
    original = _manifest(bundle)
    assert check_integrity(original) is None
    rng = random.Random(SEED)
    checks = [p for p in _paths(original) if p[:2] == ("validation", "checks") and len(p) > 2]
    by_kind, by_section, by_check, results = Counter(), Counter(), Counter(), []
    cases = [("known", path, value) for path, value in KNOWN_EDITS] + [("random", None, None)] * EDITS
    for n, (how, path, value) in enumerate(cases):
        while True:
            data = copy.deepcopy(original)
            if how == "known":
                _at(data, path[:-1])[path[-1]] = value
                kind = "known"
            else:
                where = rng.choice(checks) if n % 10 == 0 else ("exit", "default_threshold") if n % 10 == 5 else None
                kind = _edit(rng, data, where)
            if canonical_json(data) != canonical_json(original):   # an edit that changes nothing is none
                break
        changed = sorted(k for k in original.keys() | data.keys() if k not in original or k not in data
                         or digest_of(original[k]) != digest_of(data[k]))
        (bundle / MANIFEST).write_text(json.dumps(data, indent=1))
        try:
            message = _refusal(bundle)
        except BaseException as e:   # noqa: BLE001 -- counted, then failed below
            results.append((n, kind, changed, repr(e)[:200]))
            continue
        by_kind[kind] += 1
        by_section.update(changed)
        by_check["schema_version" if "schema_version" in message
                 else "integrity" if "(edited after export?)" in message else message] += 1
    total = len(cases)
    print(json.dumps({"edits": total, "refused": total - len(results), "by_kind": dict(by_kind),
                      "by_section": dict(by_section), "by_check": dict(by_check)}, indent=1))
    assert not results, results[:5]
    assert sum(by_kind.values()) == total == EDITS + len(KNOWN_EDITS)
    assert by_section["validation"] >= EDITS // 10 and by_section["exit"] >= EDITS // 10
    (bundle / MANIFEST).write_text(json.dumps(original))
    assert Manifest.load(bundle).validation.passed          # the untouched manifest still loads


@pytest.mark.parametrize("edit,needle", [
    (lambda m: m["exit"].update(default_threshold=0.5), "section 'exit' differs from its digest"),
    (lambda m: m["validation"]["checks"]["fp32"].pop("chain_same_label"), "section 'validation' differs"),
    (lambda m: m.update(extra={"a": 1}), "section 'extra' added"),
    (lambda m: m.pop("versions"), "section 'versions' deleted"),
    (lambda m: (m["model"].update(num_heads=8), m["pruning"].update(lam=0.5)),
     "sections 'model', 'pruning' differ from their digests"),
    (lambda m: m.pop("integrity"), "no integrity record"),
    (lambda m: m["integrity"].update(manifest="0" * 64), "whole-manifest digest differs"),
    (lambda m: m["integrity"]["sections"].update(model="0" * 64), "section 'model' differs from its digest"),
    (lambda m: m["integrity"].update(algorithm="md5"), "not the one the exporter writes"),
    (lambda m: m.update(integrity=[]), "not the one the exporter writes"),
])
def test_refusal_names_what_changed(bundle, capsys, edit, needle):
    manifest = _manifest(bundle)
    edit(manifest)
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    message = _refusal(bundle)
    assert message.startswith("manifest.json: ") and needle in message and message.endswith("re-export the bundle")
    assert run_cli([str(bundle), "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: manifest.json: ") and err.count("\n") == 1


def test_schema_2_bundles_are_refused(bundle):
    manifest = _manifest(bundle)
    manifest["schema_version"] = 2
    manifest.pop("integrity")
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    assert "schema_version 2 unsupported (this runtime reads 3, 4, 5, 6, 7, 8, 9; re-export the bundle)" in _refusal(bundle)


def test_formatting_is_not_content(bundle):
    """The digests cover the content, not the layout: re-indented or re-ordered, the manifest still loads."""
    manifest = _manifest(bundle)
    reordered = dict(reversed(list(manifest.items())))
    (bundle / MANIFEST).write_text(json.dumps(reordered, indent=4, sort_keys=True, ensure_ascii=True))
    assert Manifest.load(bundle).model == Manifest.load(bundle).model


def test_resealed_edit_is_not_caught(bundle):
    """The limit: whoever re-computes the digests (`Manifest.seal`) gets a valid edit accepted; signatures
    (--trust) are the protection against that."""
    manifest = _manifest(bundle)
    manifest["exit"]["default_threshold"] = 0.5
    (bundle / MANIFEST).write_text(json.dumps(seal(manifest)))
    assert Manifest.load(bundle).exit.default_threshold == 0.5


# ---------------------------------------------------------------- file names
NAMES = {"nul": "layer\x0001.onnx", "long": "a" * 5000 + ".onnx", "newline": "layer\n01.onnx",
         "carriage return": "layer_01.onnx\r", "escape": "\x1b[31mlayer_01.onnx", "line separator": "a\u2028b.onnx",
         "lone surrogate": "layer_\ud800.onnx"}


@pytest.mark.parametrize("case", list(NAMES))
@pytest.mark.parametrize("entry", ["graph", "tokenizer"])
@pytest.mark.parametrize("sealed", [True, False])
def test_odd_file_names(bundle, monkeypatch, capsys, case, entry, sealed):
    """Refused in one line before any file is opened, re-sealed (the name check's refusal, with the name's
    repr, cut short) or not (the integrity record's)."""
    _no_sessions(monkeypatch)
    manifest = _manifest(bundle)
    (manifest["graphs"][2] if entry == "graph" else manifest["tokenizer"])["file"] = NAMES[case]
    (bundle / MANIFEST).write_text(json.dumps(seal(manifest) if sealed else manifest))
    message = _refusal(bundle)
    if sealed:
        field = "manifest.graphs[2].file" if entry == "graph" else "manifest.tokenizer.file"
        assert message.startswith(f"manifest.json: {field} ")
        assert ("5005 bytes long" in message) if case == "long" else ("holds " in message)
        if case == "nul":
            assert "'layer\\x0001.onnx' holds a NUL byte" in message
        if case == "newline":
            assert "'layer\\n01.onnx'" in message
    else:
        assert "differs from its digest" in message
    assert run_cli([str(bundle), "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("case", ["nul", "long", "newline"])
def test_path_of_checks_the_name_first(tmp_path, case):
    """`path_of` is safe with any name, also outside a parsed manifest."""
    with pytest.raises(MpeeRuntimeError) as e:
        Manifest.path_of(tmp_path, NAMES[case], "graph layer_01")
    assert "\n" not in str(e.value) and len(str(e.value)) < 200
