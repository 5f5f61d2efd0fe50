"""The bundle contract between exporter and runtime (docs/design.md, "The bundle"): the bundle's file names,
tensor names and dynamic axes, the graph stamps, and the choice lists of the model's options (scoring,
selection, exit pooling, metric, precision, truncation) and the ONNX opset, defined here once. The exporter
writes bundles with these names and the runtime reads them; nothing else spells them. A bundle folder holds
manifest.json (`manifest.Manifest`), tokenizer.json, embeddings.onnx and layer_XX.onnx per layer (and
layer_XX.batch.onnx from schema 5 on, mpee.onnx from schema 8 on).
"""

from __future__ import annotations

from ..errors import MpeeRuntimeError, shown

# 2: typed manifest; validation.passed; graphs stamped with their identity; flops facts read from "model".
# 3: the manifest's integrity record; export.bundle_id; graphs stamped with bundle, precision and tokenizer.
# 4: model.truncation (head, head+tail): a runtime that does not know it must not read a head+tail bundle.
# 5: batch_graphs (optional): per-layer graphs that run a padded batch row by row (`batch_layer_inputs`); the
#    embeddings graph takes any batch. Bundles of 3 and 4 have none: they run batches one row at a time.
# 6: model.family and model.special_tokens (padding uses its pad id); the embeddings graph takes the inputs its
#    family reads (`EMBEDDING_INPUT_SETS`). Bundles before 6 are BERT's: both inputs, [PAD] = 0.
# 7: model.relative_positions: the layer graphs of a family with a relative position bias (MPNet) carry each
#    token's original position (`positions`, after layer 0) from layer to layer; the other families' graphs
#    are those of schema 6.
# 8: single_graph (optional): mpee.onnx, the whole bundle as one graph with the exit rule inside (below).
# 9: exit.length_points (optional): an operating point per input-length bucket, which a runtime that does not
#    know it would ignore, running every text at the default point.
SCHEMA_VERSION = 9
SUPPORTED_SCHEMA_VERSIONS = (3, 4, 5, 6, 7, 8, 9)
FORMAT = "mpee-bundle"
MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"
EMBEDDINGS = "embeddings.onnx"
OPSET = 17                        # the default ONNX opset of every graph, and the lowest the runtime reads
BUNDLE_PRECISIONS = ("fp32", "int8")   # of a bundle's graphs (training precisions are another list)
SCORINGS = ("cls", "all", "mean")     # token score: [CLS] query row, mean over all query rows, mean query
SELECTIONS = ("top", "bottom")        # which tokens a pruning layer keeps
METRICS = ("accuracy", "f1")          # a task's headline metric (f1: of class 1)
EXIT_POOLINGS = ("cls", "mean")       # exit head input: [CLS] vector or mean of the tokens
TRUNCATIONS = ("head", "head+tail")   # which tokens of a long text are kept (text/truncation.py states the rule)
# "standard": ONNX-domain operators only; "fused": with onnxruntime's com.microsoft fused operators
# (Attention, SkipLayerNormalization, BiasGelu), which need onnxruntime to run.
GRAPH_OPS = ("standard", "fused")
# Keys of the ONNX metadata entries stamped into every graph at export (`graph_stamp`) and compared with the
# manifest when the engine opens it, so a graph file replaced by another, even with every checksum and
# digest re-computed, is refused: its role (manifest entry name: another layer's file), its precision (an
# int8 graph in an fp32 bundle), the bundle's identity (a graph of another bundle), the sha256 of the
# tokenizer it was exported with (a different tokenizer; tokenizer.json cannot carry a stamp of its own,
# because the tokenizers library refuses unknown keys).
GRAPH_ID_KEY = "mpee_graph"
PRECISION_KEY = "mpee_precision"
BUNDLE_ID_KEY = "mpee_bundle"
TOKENIZER_KEY = "mpee_tokenizer_sha256"
MAX_FILE_NAME = 255               # bytes in UTF-8: the common file-system limit of one name

# Tensor names. Layer graphs take the state of the previous layer and return the next one.
INPUT_IDS, TOKEN_TYPE_IDS = "input_ids", "token_type_ids"
HIDDEN, SCORES, MEMORY, KEEP_RATIO = "hidden", "scores", "memory", "keep_ratio"
HIDDEN_OUT, SCORES_OUT, MEMORY_OUT, PROBS, ENTROPY = "hidden_out", "scores_out", "memory_out", "probs", "entropy"
# Relative-position families (model.relative_positions): each token's position in the input (1, N) or (B, N)
# int64; layer 0 starts them (0..N-1), every layer returns them in its token order (pruning moves them).
POSITIONS, POSITIONS_OUT = "positions", "positions_out"
# Batch graphs: each row's real tokens are a prefix of its padded row, `lengths` (B,) int64 long, [CLS] included.
LENGTHS, LENGTHS_OUT = "lengths", "lengths_out"
EMBEDDING_INPUTS, EMBEDDING_OUTPUTS = (INPUT_IDS, TOKEN_TYPE_IDS), (HIDDEN,)
# The embeddings graph's inputs, one set per kind of family: with token types (BERT, ELECTRA) or without
# (RoBERTa, XLM-R, DistilBERT). The manifest's embeddings entry says which one a bundle's graph takes.
EMBEDDING_INPUT_SETS = (EMBEDDING_INPUTS, (INPUT_IDS,))
BERT_PAD_ID = 0                   # the pad id of bundles written before schema 6 (all BERT)
LAYER_OUTPUTS = (HIDDEN_OUT, SCORES_OUT, MEMORY_OUT, PROBS, ENTROPY)
BATCH_LAYER_OUTPUTS = LAYER_OUTPUTS + (LENGTHS_OUT,)
# Which output feeds which input of the next layer.
CARRY = {HIDDEN_OUT: HIDDEN, SCORES_OUT: SCORES, MEMORY_OUT: MEMORY, POSITIONS_OUT: POSITIONS}

# The single graph (optional): the whole bundle as one ONNX model with the exit rule inside, nested `If` nodes
# so that a text leaving at layer k runs k layers. Inputs: the embeddings graph's, the threshold (float64
# scalar), the policy (int64 scalar: its index in core.policy.POLICIES) and, where the bundle prunes, the keep
# ratio of each pruning layer in layer order (float32 (P,)). Outputs: the exit layer's probabilities (1, C), the
# exit layer (int64 scalar, 1-based), the tokens entering each layer run and leaving its pruning step (int64 (k,)).
SINGLE_GRAPH, SINGLE_GRAPH_NAME = "mpee.onnx", "mpee"
THRESHOLD, POLICY, KEEP_RATIOS = "threshold", "policy", "keep_ratios"
EXIT_LAYER, TOKENS_PER_LAYER, FFN_TOKENS_PER_LAYER = "exit_layer", "tokens_per_layer", "ffn_tokens_per_layer"
SINGLE_GRAPH_OUTPUTS = (PROBS, EXIT_LAYER, TOKENS_PER_LAYER, FFN_TOKENS_PER_LAYER)


def single_graph_inputs(embedding_inputs, prunes: bool) -> list[str]:
    """The single graph's inputs: the embeddings graph's, the exit rule's, and the keep ratios if it prunes."""
    return list(embedding_inputs) + [THRESHOLD, POLICY] + ([KEEP_RATIOS] if prunes else [])


def layer_file(i: int) -> str:
    return f"layer_{i:02d}.onnx"


def layer_name(i: int) -> str:
    return f"layer_{i:02d}"


def layer_inputs(i: int, prunes: bool, positions: bool = False) -> list[str]:
    """Layer 0 starts both memories (and the positions), so it takes only the hidden states (and the keep ratio
    if it prunes); `positions`: the model carries token positions (model.relative_positions)."""
    names = [HIDDEN] if i == 0 else [HIDDEN, SCORES, MEMORY] + ([POSITIONS] if positions else [])
    return names + [KEEP_RATIO] if prunes else names


def layer_outputs(positions: bool = False) -> list[str]:
    """A batch-1 layer graph's outputs: LAYER_OUTPUTS, then the tokens' positions when the model carries them."""
    return list(LAYER_OUTPUTS) + ([POSITIONS_OUT] if positions else [])


def batch_layer_file(i: int) -> str:
    return f"layer_{i:02d}.batch.onnx"


def batch_layer_name(i: int) -> str:
    return f"batch_layer_{i:02d}"


def batch_layer_inputs(i: int, prunes: bool, positions: bool = False) -> list[str]:
    """A batch layer graph's inputs: those of `layer_inputs` with each row's real length after the hidden states."""
    names = layer_inputs(i, prunes, positions)
    return names[:1] + [LENGTHS] + names[1:]


def batch_layer_outputs(positions: bool = False) -> list[str]:
    """A batch layer graph's outputs: BATCH_LAYER_OUTPUTS, then the positions when the model carries them."""
    return list(BATCH_LAYER_OUTPUTS) + ([POSITIONS_OUT] if positions else [])


def dynamic_axes(names: list[str], batch: bool = False) -> dict[str, dict[int, str]]:
    """Dynamic axes for torch.onnx.export: the sequence axis of every token-shaped tensor; with `batch`, the
    batch axis of every tensor but the keep ratio too (batch-1 graphs have it fixed at 1, which their
    optimizations rely on)."""
    axes = {INPUT_IDS: {1: "seq"}, TOKEN_TYPE_IDS: {1: "seq"}, HIDDEN: {1: "seq"}, SCORES: {1: "seq_minus_1"},
            HIDDEN_OUT: {1: "seq_out"}, SCORES_OUT: {1: "seq_out_minus_1"}, POSITIONS: {1: "seq"},
            POSITIONS_OUT: {1: "seq_out"}}
    if batch:
        axes = {n: {0: "batch"} | axes.get(n, {}) for n in (*axes, MEMORY, MEMORY_OUT, PROBS, ENTROPY, LENGTHS,
                                                              LENGTHS_OUT)}
    return {n: axes[n] for n in names if n in axes}


def graph_stamp(name: str, precision: str, bundle_id: str, tokenizer_sha256: str) -> dict[str, str]:
    """The ONNX metadata entries a graph of the bundle carries: written by the exporter, compared by the
    engine (`Manifest.graph_stamp` gives the ones the manifest expects)."""
    return {GRAPH_ID_KEY: name, PRECISION_KEY: precision, BUNDLE_ID_KEY: bundle_id,
            TOKENIZER_KEY: tokenizer_sha256}


def check_file_name(name: str, where: str) -> None:
    """A file name from the manifest, checked before the file system sees it: at most MAX_FILE_NAME bytes,
    printable characters only (no NUL byte, newline or other control or format character)."""
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > MAX_FILE_NAME:
        raise MpeeRuntimeError(f"{MANIFEST}: {where} {shown(name)} is {size} bytes long (a file name is at "
                               f"most {MAX_FILE_NAME})")
    bad = next((c for c in name if not c.isprintable()), None)
    if bad is not None:
        what = "a NUL byte" if bad == "\0" else f"the non-printable character {bad!r}"
        raise MpeeRuntimeError(f"{MANIFEST}: {where} {shown(name)} holds {what}")
