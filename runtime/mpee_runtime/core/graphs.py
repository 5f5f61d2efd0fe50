"""Opening a bundle's graphs: one onnxruntime session per graph, refused when the file is not the graph the
manifest says it is (its stamps, its input and output names)."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from ..bundle.contract import BUNDLE_ID_KEY, GRAPH_ID_KEY, PRECISION_KEY, TOKENIZER_KEY
from ..bundle.manifest import GraphEntry, Manifest
from ..errors import MpeeRuntimeError, shown
from .session import open_session


def open_graph(bundle: Path, entry: GraphEntry, opts: ort.SessionOptions, providers: list[str],
                manifest: Manifest) -> ort.InferenceSession:
    """One session, refused when the file is not the graph the manifest says it is: its stamps
    (`check_stamp`) or its input and output names differ."""
    path = bundle / entry.file
    sess = open_session(path, opts, providers=providers)
    check_stamp(path, sess.get_modelmeta().custom_metadata_map, manifest.graph_stamp(entry))
    inputs, outputs = [i.name for i in sess.get_inputs()], [o.name for o in sess.get_outputs()]
    if inputs != entry.inputs or outputs != entry.outputs:
        raise MpeeRuntimeError(f"{path}: inputs {inputs} and outputs {outputs} differ from the manifest's "
                               f"{entry.inputs} and {entry.outputs}")
    return sess


def check_stamp(path: Path, props: dict[str, str], want: dict[str, str]) -> None:
    """The graph's metadata stamps against the manifest's (`contract.graph_stamp`), in this order: role,
    precision, bundle, tokenizer; the first that differs is refused in one line. These hold when every
    sha256 and digest in the manifest has been re-computed around a replaced file."""
    got = {key: props.get(key) for key in want}
    role, precision = GRAPH_ID_KEY, PRECISION_KEY
    if got[role] != want[role]:
        raise MpeeRuntimeError(f"{path}: holds graph {shown(got[role])}, the manifest expects {want[role]!r} "
                               "(files swapped or replaced)")
    if got[precision] != want[precision]:
        raise MpeeRuntimeError(f"{path}: a {shown(got[precision])} graph, the manifest says {want[precision]!r} "
                               "(replaced by a graph of another export)")
    if got[BUNDLE_ID_KEY] != want[BUNDLE_ID_KEY]:
        raise MpeeRuntimeError(f"{path}: stamped for bundle {shown(got[BUNDLE_ID_KEY], 20)}, this bundle is "
                               f"{want[BUNDLE_ID_KEY][:16]!r}... (a graph of another bundle)")
    if got[TOKENIZER_KEY] != want[TOKENIZER_KEY]:
        raise MpeeRuntimeError(f"{path}: exported with tokenizer sha256 {shown(got[TOKENIZER_KEY], 20)}, the "
                               f"manifest's tokenizer is {want[TOKENIZER_KEY][:16]!r}... (tokenizer.json "
                               "replaced)")
