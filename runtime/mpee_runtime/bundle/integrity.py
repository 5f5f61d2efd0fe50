"""Integrity: the sha256 of a file, and the digests that seal a manifest (`seal`) and find any edit made
after the export (`check_integrity`), each refusal one MpeeRuntimeError line naming the sections."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..errors import MpeeRuntimeError, shown
from .contract import MANIFEST

# The manifest's integrity record (top-level key) and how its digests are computed (`digest_of`).
INTEGRITY = "integrity"
INTEGRITY_ALGORITHM = "sha256 of canonical JSON (sorted keys, compact separators, UTF-8)"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def canonical_json(value: Any) -> bytes:
    """The one byte form of a JSON value that its digests are computed on: sorted keys, no whitespace,
    UTF-8 (lone surrogates kept as they are, so that hashing never fails)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8",
                                                                                               "surrogatepass")


def digest_of(value: Any) -> str:
    """sha256 (hex) of a JSON value's canonical form: any change of a key, a value or a type changes it."""
    return hashlib.sha256(canonical_json(value)).hexdigest()


def _sections(keys: list[str]) -> str:
    return ("section " if len(keys) == 1 else "sections ") + ", ".join(shown(k, 40) for k in keys)


def seal(data: dict) -> dict:
    """`data` (a manifest as JSON) with its integrity record: the digest of every top-level section and
    of the whole manifest, `integrity` excluded (`digest_of`). Whoever can run this can re-seal an edited
    manifest: it protects against accidents and hand edits, signatures against deliberate changes."""
    body = {k: v for k, v in data.items() if k != INTEGRITY}
    return body | {INTEGRITY: {"algorithm": INTEGRITY_ALGORITHM,
                               "sections": {k: digest_of(v) for k, v in sorted(body.items())},
                               "manifest": digest_of(body)}}

def check_integrity(data: dict) -> None:
    """Refuse, in one line naming the sections, a manifest whose content is not what `seal` recorded: a
    section edited, added or deleted, or the integrity record itself edited."""
    def refuse(what: str) -> MpeeRuntimeError:
        return MpeeRuntimeError(f"{MANIFEST}: {what} (edited after export?): re-export the bundle")

    record = data.get(INTEGRITY)
    if record is None:
        raise refuse(f"no {INTEGRITY} record, so its content cannot be checked")
    sections = record.get("sections") if isinstance(record, dict) else None
    if (not isinstance(record, dict) or set(record) != {"algorithm", "sections", "manifest"}
            or record["algorithm"] != INTEGRITY_ALGORITHM or not isinstance(sections, dict)
            or not all(isinstance(v, str) for v in sections.values())):
        raise refuse(f"the {INTEGRITY} record is not the one the exporter writes")
    body = {k: v for k, v in data.items() if k != INTEGRITY}
    changed = sorted(k for k in body.keys() & sections.keys() if digest_of(body[k]) != sections[k])
    added, deleted = sorted(body.keys() - sections.keys()), sorted(sections.keys() - body.keys())
    problems = []
    if changed:
        problems.append(f"{_sections(changed)} "
                        + ("differs from its digest" if len(changed) == 1 else "differ from their digests"))
    if added:
        problems.append(f"{_sections(added)} added (not in the {INTEGRITY} record)")
    if deleted:
        problems.append(f"{_sections(deleted)} deleted (listed in the {INTEGRITY} record)")
    if problems:
        raise refuse("; ".join(problems))
    if digest_of(body) != record["manifest"]:
        raise refuse("the whole-manifest digest differs from its content")
