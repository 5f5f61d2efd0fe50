"""The bundle contract (DESIGN 3): file names, tensor names and dynamic axes, and manifest checks.

The exporter writes bundles with these names and the runtime reads them; nothing else spells them.
A bundle folder holds manifest.json, tokenizer.json, embeddings.onnx and layer_XX.onnx per layer.
The runtime refuses a bundle before creating any session when its schema version is unknown, a file
is missing or does not match its sha256, or a path points outside the folder.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .errors import MpeeRuntimeError

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)
MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"
EMBEDDINGS = "embeddings.onnx"
MIN_OPSET = 17

# Tensor names. Layer graphs take the state of the previous layer and return the next one.
INPUT_IDS, TOKEN_TYPE_IDS = "input_ids", "token_type_ids"
HIDDEN, SCORES, MEMORY, KEEP_RATIO = "hidden", "scores", "memory", "keep_ratio"
HIDDEN_OUT, SCORES_OUT, MEMORY_OUT, PROBS, ENTROPY = "hidden_out", "scores_out", "memory_out", "probs", "entropy"
LAYER_OUTPUTS = (HIDDEN_OUT, SCORES_OUT, MEMORY_OUT, PROBS, ENTROPY)
# Which output feeds which input of the next layer.
CARRY = {HIDDEN_OUT: HIDDEN, SCORES_OUT: SCORES, MEMORY_OUT: MEMORY}


def layer_file(i: int) -> str:
    return f"layer_{i:02d}.onnx"


def layer_inputs(i: int, prunes: bool) -> list[str]:
    """Layer 0 starts both memories, so it takes only the hidden states (and the keep ratio if it prunes)."""
    names = [HIDDEN] if i == 0 else [HIDDEN, SCORES, MEMORY]
    return names + [KEEP_RATIO] if prunes else names


def dynamic_axes(names: list[str]) -> dict[str, dict[int, str]]:
    """Dynamic axes for torch.onnx.export: the sequence axis of every token-shaped tensor."""
    axes = {INPUT_IDS: {1: "seq"}, TOKEN_TYPE_IDS: {1: "seq"}, HIDDEN: {1: "seq"}, SCORES: {1: "seq_minus_1"},
            HIDDEN_OUT: {1: "seq_out"}, SCORES_OUT: {1: "seq_out_minus_1"}}
    return {n: axes[n] for n in names if n in axes}


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class GraphEntry:
    name: str
    file: str
    sha256: str
    inputs: list[str]
    outputs: list[str]
    layer: int | None = None      # None for the embeddings graph
    prunes: bool = False
    precision: str = "fp32"


def _inside(folder: Path, name: str, what: str) -> Path:
    path = (folder / name).resolve()
    if Path(name).is_absolute() or folder.resolve() not in path.parents:
        raise MpeeRuntimeError(f"{MANIFEST}: {what} path {name!r} points outside the bundle")
    return path


def load_manifest(folder: Path, *, verify: bool = True) -> dict:
    """Read and check manifest.json; with `verify`, also every file's presence and sha256."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise MpeeRuntimeError(f"{folder}: no {MANIFEST} (not an MPEE bundle)")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise MpeeRuntimeError(f"{path}: not valid JSON ({e})") from None
    version = manifest.get("schema_version") if isinstance(manifest, dict) else None
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        raise MpeeRuntimeError(f"{path}: schema_version {version!r} unsupported "
                               f"(this runtime reads {', '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))})")
    try:
        files = [(manifest["tokenizer"]["file"], manifest["tokenizer"]["sha256"], "tokenizer")]
        files += [(g["file"], g["sha256"], f"graph {g['name']}") for g in manifest["graphs"]]
        n_layers = manifest["model"]["num_layers"]
    except (KeyError, TypeError) as e:
        raise MpeeRuntimeError(f"{path}: missing field {e}") from None
    if len(manifest["graphs"]) != n_layers + 1:
        raise MpeeRuntimeError(f"{path}: {len(manifest['graphs'])} graphs for {n_layers} layers")
    for name, digest, what in files:
        target = _inside(folder, name, what)
        if not verify:
            continue
        if not target.is_file():
            raise MpeeRuntimeError(f"{folder}: {what} file {name} is missing")
        if sha256_of(target) != digest:
            raise MpeeRuntimeError(f"{folder}: {what} file {name} does not match its sha256 (modified?)")
    return manifest


def graph_entries(manifest: dict) -> list[GraphEntry]:
    return [GraphEntry(**g) for g in manifest["graphs"]]
