"""Export validation: each graph against its PyTorch module, then the chain against the PyTorch model.

Per graph, onnxruntime and PyTorch see the same inputs (random ones, and the real intermediate states of
real examples) and every output's max |difference| is recorded. For the chain, `MpeeEngine` (the device
runtime) and `MpeeModel.predict` classify the same token ids; exit layer and label must agree. The batch
graphs run the same ids in batches of rows of mixed lengths (`MpeeEngine.run_batch`): each row's exit layer,
label and tokens per layer must be those `MpeeModel.predict` gives it alone.
This module also holds the verdict (`verdict`): the export publishes an fp32 bundle only when it passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from mpee_runtime.bundle.contract import (
    CARRY,
    HIDDEN,
    INPUT_IDS,
    KEEP_RATIO,
    POSITIONS_OUT,
    TOKEN_TYPE_IDS,
)
from mpee_runtime.bundle.manifest import GraphEntry, Manifest
from mpee_runtime.core.engine import MpeeEngine
from mpee_runtime.core.policy import NO_EXIT, ExitPolicy
from mpee_runtime.core.session import open_session, session_options

from ..model.modeling import MpeeModel
from .dummies import dummy_feeds
from .subgraphs import EmbeddingsGraph, LayerGraph

ATOL = {"fp32": 1e-4}          # per-graph max |diff| allowed in fp32; int8 is judged by agreement
MIN_AGREEMENT = 0.995          # exit layer and label, fp32
EXPORTER_THREADS = 2


def exporter_session_options() -> ort.SessionOptions:
    """Sessions of the exporter's process: no spinning, because this process also runs torch, whose OpenMP
    threads keep spinning after each call; onnxruntime's pools would spin beside them on the same cores."""
    return session_options(EXPORTER_THREADS, spinning=False)


@dataclass(frozen=True)
class GraphCheck:
    """Each graph against its PyTorch module: max |ONNX - PyTorch| per output ("graph.output")."""

    max_abs_diff: dict[str, float]
    max_abs_diff_overall: float
    errors: list[str]
    # "graph": real examples left out of that pruning graph's comparison because PyTorch's scores at the k-th
    # and (k+1)-th place are within TIE_GAP (`_near_tie`): a rounding difference may keep the other token.
    ties: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> GraphCheck:
        return cls(dict(d["max_abs_diff"]), d["max_abs_diff_overall"], list(d["errors"]), dict(d.get("ties", {})))


@dataclass(frozen=True)
class ChainCheck:
    """The runtime's chain against MpeeModel.predict on the same token ids at one exit rule."""

    examples: int
    policy: str
    threshold: float
    keep_ratio: float | None
    same_exit_layer: float
    same_label: float
    exit_layer_shift_histogram: dict[str, int]
    max_prob_diff_same_exit: float
    accuracy_runtime: float | None = None       # with labels
    accuracy_pytorch: float | None = None

    @classmethod
    def from_dict(cls, d: dict) -> ChainCheck:
        return cls(**d)


BATCH_ROWS = 8                 # rows per batch in the batch graphs' check


@dataclass(frozen=True)
class BatchCheck:
    """The runtime's batch graphs (rows in batches of `batch_size`, in the examples' order, so each batch mixes
    lengths) against MpeeModel.predict on each row alone, at one exit rule."""

    examples: int
    batch_size: int
    policy: str
    threshold: float
    same_exit_layer: float
    same_label: float
    same_tokens_per_layer: float
    max_prob_diff_same_exit: float

    @classmethod
    def from_dict(cls, d: dict) -> BatchCheck:
        return cls(**d)


@dataclass(frozen=True)
class Validation:
    """One precision's checks. fp32 is judged (`passed`, `problems`); int8 is reported (`passed` None)."""

    precision: str
    graphs: GraphCheck
    chain: ChainCheck
    chain_full_depth: ChainCheck
    passed: bool | None
    problems: list[str] = field(default_factory=list)
    batch: BatchCheck | None = None          # None: the bundle has no batch graphs

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Validation:
        batch = d.get("batch")
        return cls(d["precision"], GraphCheck.from_dict(d["graphs"]), ChainCheck.from_dict(d["chain"]),
                   ChainCheck.from_dict(d["chain_full_depth"]), d["passed"], list(d.get("problems", [])),
                   None if batch is None else BatchCheck.from_dict(batch))

    def summary(self) -> dict:
        """What the manifest's validation.checks records of this precision: the verdict and headline figures."""
        c = self.chain
        return {"passed": self.passed, "graph_max_abs_diff": self.graphs.max_abs_diff_overall,
                "chain_examples": c.examples, "chain_same_exit_layer": c.same_exit_layer,
                "chain_same_label": c.same_label, "chain_max_prob_diff_same_exit": c.max_prob_diff_same_exit} | (
                    {} if self.batch is None else {
                        "batch_same_exit_layer": self.batch.same_exit_layer,
                        "batch_same_tokens_per_layer": self.batch.same_tokens_per_layer,
                        "batch_max_prob_diff_same_exit": self.batch.max_prob_diff_same_exit})

    def describe(self) -> str:
        """One line: the verdict and what it rests on. fp32: PASSED / FAILED, graph parity, chain agreement (and
        accuracies with labels). A quantized bundle: OK / CHECK by `quantized_verdict` (`describe_quantized`)."""
        if self.passed is None:
            return self.describe_quantized()
        c = self.chain
        status = "PASSED" if self.passed else "FAILED"
        line = (f"{self.precision}: {status}  graph max|diff| {self.graphs.max_abs_diff_overall:.2e}  chain on "
                f"{c.examples} examples (policy {c.policy}, F={c.threshold}): same exit layer "
                f"{100 * c.same_exit_layer:.1f}%, same label {100 * c.same_label:.1f}%, max prob diff "
                f"{c.max_prob_diff_same_exit:.2e}")
        if c.accuracy_runtime is not None:
            line += f", accuracy runtime {100 * c.accuracy_runtime:.2f} vs PyTorch {100 * c.accuracy_pytorch:.2f}"
        if self.batch is not None:
            b = self.batch
            line += (f"; batches of {b.batch_size}: same exit layer {100 * b.same_exit_layer:.1f}%, same tokens "
                     f"{100 * b.same_tokens_per_layer:.1f}%, max prob diff {b.max_prob_diff_same_exit:.2e}")
        if self.graphs.ties:
            line += f"; near-tied pruning steps left out of the graph check: {self.graphs.ties}"
        return line

    def describe_quantized(self) -> str:
        """A quantized bundle's line: OK or CHECK (`quantized_verdict`), then the figures it rests on. Its graphs
        differ from PyTorch by the quantization itself, so their max |diff| says nothing and is left to
        validation.json; what matters is what the device answers: accuracy (with labels) or agreement."""
        c = self.chain
        ok, labelled = quantized_verdict(c)
        rule = f"exit rule {c.policy} F={c.threshold}"
        agreement = (f"same label as PyTorch fp32 on {100 * c.same_label:.1f}%, same exit layer "
                     f"{100 * c.same_exit_layer:.1f}%")
        if labelled:
            drop = 100 * (c.accuracy_runtime - c.accuracy_pytorch)
            line = (f"{self.precision}: {'OK' if ok else 'CHECK'} (quantized: judged by accuracy, not compared "
                    f"exactly): accuracy {100 * c.accuracy_runtime:.2f} vs PyTorch fp32 {100 * c.accuracy_pytorch:.2f} "
                    f"({drop:+.2f} points; OK down to -{INT8_MAX_DROP:g}) on {c.examples} labelled examples at the "
                    f"bundle's {rule}; {agreement}")
        else:
            line = (f"{self.precision}: {'OK' if ok else 'CHECK'} (quantized: judged by agreement with fp32, not "
                    f"compared exactly): {agreement} (OK from {100 * INT8_MIN_SAME_LABEL:g}% same label) on "
                    f"{c.examples} unlabelled inputs at the bundle's {rule}; give --data or --dev to compare accuracy")
        if self.batch is not None:
            line += f"; batches of {self.batch.batch_size}: same label {100 * self.batch.same_label:.1f}%"
        if not ok:
            line += (f". The {self.precision} bundle answers worse than fp32 here: measure it on your own dev data "
                     "before deploying it, or deploy the fp32 bundle")
        return line


# A quantized bundle is OK (`quantized_verdict`) when, at the bundle's exit rule on the validation examples, its
# accuracy is at most INT8_MAX_DROP points below PyTorch fp32's (labelled examples), or, without labels, its
# label is PyTorch fp32's on at least INT8_MIN_SAME_LABEL of them. Reported, never enforced: the bundle is
# published either way (its parity is the fp32 bundle's, judged by `verdict`).
INT8_MAX_DROP = 2.0
INT8_MIN_SAME_LABEL = 0.95


def quantized_verdict(chain: ChainCheck) -> tuple[bool, bool]:
    """(whether the quantized bundle is OK, whether that was judged on labels): see INT8_MAX_DROP."""
    if chain.accuracy_runtime is not None and chain.accuracy_pytorch is not None:
        drop = 100 * (chain.accuracy_pytorch - chain.accuracy_runtime)
        return drop <= INT8_MAX_DROP + 1e-9, True
    return chain.same_label >= INT8_MIN_SAME_LABEL, False


def _run_torch(module: torch.nn.Module, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    with torch.no_grad():
        out = module(*(torch.from_numpy(v) for v in feeds.values()))
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


def _compare(name: str, session: ort.InferenceSession, module: torch.nn.Module, feeds: dict, outputs: list[str],
             worst: dict[str, float], errors: list[str], canonical=None) -> list[np.ndarray]:
    """Record every output's max |ONNX - PyTorch| in `worst`; `canonical` (applied to both output lists)
    puts outputs whose row order may differ into one order first. Returns PyTorch's outputs as they are."""
    got = session.run(outputs, feeds)
    want = _run_torch(module, feeds)
    pairs = zip(outputs, *(canonical(x) for x in (got, want))) if canonical else zip(outputs, got, want)
    for out_name, g, w in pairs:
        key = f"{name}.{out_name}"
        if g.shape != w.shape:
            errors.append(f"{key}: shape {g.shape} != PyTorch {w.shape}")
            worst[key] = float("inf")
            continue
        diff = float(np.abs(g.astype(np.float64) - w).max()) if g.size else 0.0
        worst[key] = max(worst.get(key, 0.0), diff)
    return want


def random_feeds(model: MpeeModel, entry: GraphEntry, seq: int, ratio: float, rng: np.random.Generator
                 ) -> dict[str, np.ndarray]:
    return dummy_feeds(entry.inputs, hidden=model.sizes.hidden, num_labels=model.mpee.num_labels,
                       vocab_size=model.sizes.vocab, seq=seq, keep_ratio=ratio, rng=rng)


def check_graphs(model: MpeeModel, bundle: Path, entries: Sequence[GraphEntry],
                 examples: Sequence[tuple[np.ndarray, np.ndarray]], *, seed: int = 0) -> GraphCheck:
    """Max |ONNX - PyTorch| per output over random inputs and the real states of `examples`."""
    model.eval()
    rng = np.random.default_rng(seed)
    opts = exporter_session_options()
    sessions = [open_session(bundle / e.file, opts) for e in entries]
    modules = [EmbeddingsGraph(model)] + [LayerGraph(model, i) for i in range(model.mpee.num_layers)]
    worst: dict[str, float] = {}
    errors: list[str] = []
    for seq, ratio in ((16, 0.7), (7, 0.3), (33, 1.0)):
        for e, sess, mod in zip(entries, sessions, modules):
            _compare(e.name, sess, mod, random_feeds(model, e, seq, ratio, rng), e.outputs, worst, errors)
    ratios = dict(zip(model.mpee.prune_layers, model.mpee.keep_ratios))
    ties: dict[str, int] = {}
    for ids, types in examples:   # real states: each layer gets what PyTorch's previous layer produced
        feeds = {k: v for k, v in ((INPUT_IDS, ids), (TOKEN_TYPE_IDS, types)) if k in entries[0].inputs}
        (hidden,) = _compare(entries[0].name, sessions[0], modules[0], feeds, entries[0].outputs, worst, errors)
        state = {HIDDEN: hidden}
        for i in range(model.mpee.num_layers):
            state[KEEP_RATIO] = np.asarray(ratios.get(i, 1.0), dtype=np.float32)
            e = entries[i + 1]
            feeds = {n: state[n] for n in e.inputs}
            if i in ratios and _near_tie(modules[i + 1], feeds, ratios[i]):
                ties[e.name] = ties.get(e.name, 0) + 1
                outs = _run_torch(modules[i + 1], feeds)
            else:
                canonical = _kept_rows_in_one_order(feeds[HIDDEN].shape[1], ratios[i], model.mpee.fuse_token,
                                                    e.outputs) if i in ratios else None
                outs = _compare(e.name, sessions[i + 1], modules[i + 1], feeds, e.outputs, worst, errors, canonical)
            state.update((CARRY[name], x) for name, x in zip(e.outputs, outs) if name in CARRY)
    return GraphCheck(worst, max(worst.values()), sorted(set(errors)), ties)


# Score memory values closer than this, relative to their size, may rank either way in onnxruntime and
# PyTorch (float32 rounding is ~1e-7 relative; neighbours in a ranking of 500 scores are ~1e-3 apart).
TIE_GAP = 1e-4


def _kept_rows_in_one_order(n_in: int, ratio: float, fuse: bool, names: Sequence[str]):
    """For a pruning layer's outputs `names` (hidden, scores, ..., and the positions where carried): the kept
    tokens, which come in descending score order, put in one canonical order (by a fixed random projection of
    their hidden rows), so that two kept tokens of near-equal score that onnxruntime and PyTorch order
    differently compare as equal; [CLS] and the fused token stay where they are. Which tokens are kept is
    checked by `_near_tie` and the diff."""
    from ..model.modeling import keep_count
    k = int(keep_count(torch.tensor(n_in), ratio))
    fused = int(fuse and k < n_in - 1)

    def canonical(outs: list[np.ndarray]) -> list[np.ndarray]:
        hidden, scores = outs[0], outs[1]
        if hidden.shape[1] != 1 + k + fused or scores.shape[1] != k + fused:
            return outs   # a shape the diff will report
        proj = np.random.default_rng(0).standard_normal(hidden.shape[2])
        order = np.argsort(hidden[0, 1:1 + k] @ proj, kind="stable")
        hidden = hidden.copy()
        scores = scores.copy()
        hidden[0, 1:1 + k] = hidden[0, 1:1 + k][order]
        scores[0, :k] = scores[0, :k][order]
        outs = [hidden, scores, *outs[2:]]
        if POSITIONS_OUT in names:
            j = list(names).index(POSITIONS_OUT)
            positions = outs[j].copy()
            positions[0, 1:1 + k] = positions[0, 1:1 + k][order]
            outs[j] = positions
        return outs
    return canonical


def _near_tie(module: torch.nn.Module, feeds: dict[str, np.ndarray], ratio: float) -> bool:
    """Whether the pruning step's k-th and (k+1)-th tokens have scores within TIE_GAP of each other, relative
    to their size (PyTorch's ranking):
    then either may be kept, and the fused token differs with it.

    Run at keep ratio 1, the layer keeps every token in descending score order, so its score output is
    the ranking itself. Long inputs make such ties likely (hundreds of scores near 1/n)."""
    from ..model.modeling import keep_count
    ranked = _run_torch(module, feeds | {KEEP_RATIO: np.asarray(1.0, dtype=np.float32)})[1][0]
    n = ranked.shape[0] + 1
    k = int(keep_count(torch.tensor(n), ratio))
    if k >= n - 1:
        return False
    a, b = float(ranked[k - 1]), float(ranked[k])   # in selection order, top or bottom
    return abs(a - b) < TIE_GAP * max(abs(a), abs(b))


def exporter_engine(folder: Path, manifest: Manifest) -> MpeeEngine:
    """The runtime engine the exporter runs on a bundle it has not published (validation, calibration),
    with the exporter's session options (no spinning beside torch)."""
    return MpeeEngine(folder, threads=EXPORTER_THREADS, warmup=0, manifest=manifest, allow_unvalidated=True,
                      spinning=False)


def check_chain(model: MpeeModel, engine: MpeeEngine, examples: Sequence[tuple[np.ndarray, np.ndarray]], *,
                policy: str, threshold: float, keep_ratio: float | None = None,
                labels: Sequence[int] | None = None) -> ChainCheck:
    """Runtime chain vs PyTorch model on the same token ids: agreement and probability differences."""
    rule = ExitPolicy(policy, threshold, model.mpee.num_labels)
    if keep_ratio is None:
        # Compare at the bundle's default keep ratio, which calibration may have changed from the config's.
        defaults = set(engine.default_keep_ratios.values())
        keep_ratio = defaults.pop() if len(defaults) == 1 else None
    same_exit = same_label = 0
    max_diff = 0.0
    shifts: dict[str, int] = {}
    correct_onnx = correct_torch = 0
    for n, (ids, types) in enumerate(examples):
        ref = model.predict(torch.from_numpy(ids), torch.from_numpy(types), policy=rule, keep_ratio=keep_ratio)
        got = engine.run_ids(ids, types, threshold=threshold, policy=policy, keep_ratio=keep_ratio)
        same_exit += got.exit_layer == ref.exit_layer
        same_label += got.label_index == ref.label
        shift = got.exit_layer - ref.exit_layer
        shifts[str(shift)] = shifts.get(str(shift), 0) + 1
        if got.exit_layer == ref.exit_layer:
            max_diff = max(max_diff, float(np.abs(np.asarray(got.probs) - ref.probs).max()))
        if labels is not None:
            correct_onnx += got.label_index == labels[n]
            correct_torch += ref.label == labels[n]
    total = len(examples)
    return ChainCheck(total, policy, threshold, keep_ratio, same_exit / total, same_label / total,
                      dict(sorted(shifts.items(), key=lambda kv: int(kv[0]))), max_diff,
                      None if labels is None else correct_onnx / total,
                      None if labels is None else correct_torch / total)


def check_batches(model: MpeeModel, engine: MpeeEngine, examples: Sequence[tuple[np.ndarray, np.ndarray]], *,
                  policy: str, threshold: float, batch_size: int = BATCH_ROWS) -> BatchCheck | None:
    """The batch graphs against MpeeModel.predict on each row alone (None when the bundle has none)."""
    if not engine.manifest.supports_batches:
        return None
    rule = ExitPolicy(policy, threshold, model.mpee.num_labels)
    defaults = set(engine.default_keep_ratios.values())   # as check_chain: the bundle's, maybe calibrated
    keep_ratio = defaults.pop() if len(defaults) == 1 else None
    same_exit = same_label = same_tokens = 0
    max_diff = 0.0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        got = engine.run_batch([ids[0] for ids, _ in chunk], [types[0] for _, types in chunk], policy=policy,
                               threshold=threshold, keep_ratio=keep_ratio)
        for (ids, types), g in zip(chunk, got):
            ref = model.predict(torch.from_numpy(ids), torch.from_numpy(types), policy=rule, keep_ratio=keep_ratio)
            same_exit += g.exit_layer == ref.exit_layer
            same_label += g.label_index == ref.label
            same_tokens += g.tokens_per_layer == ref.attn_lens
            if g.exit_layer == ref.exit_layer:
                max_diff = max(max_diff, float(np.abs(np.asarray(g.probs) - ref.probs).max()))
    total = len(examples)
    return BatchCheck(total, batch_size, policy, threshold, same_exit / total, same_label / total,
                      same_tokens / total, max_diff)


def validation_examples(tokenizer, texts: list[tuple[str, str | None]] | None, model: MpeeModel,
                        n_random: int = 24) -> list[tuple[np.ndarray, np.ndarray]]:
    """Token ids of real texts (when given; truncated by the model's rule) or of random token sequences of
    varied length, up to 64 tokens and one of the model's full length (the pruning step at long inputs)."""
    if texts:
        from ..data.batching import tokenize
        ids, types = tokenize(tokenizer, [a for a, _ in texts], [b for _, b in texts] if texts[0][1] is not None
                              else None, model.mpee.max_length, model.mpee.truncation)
        return [(np.asarray([i], dtype=np.int64), np.asarray([t], dtype=np.int64)) for i, t in zip(ids, types)]
    rng = np.random.default_rng(1)
    out = []
    longest = min(model.mpee.max_length, model.sizes.positions)
    lengths = list(rng.integers(3, min(64, model.mpee.max_length), n_random))
    for n in lengths + ([longest] if longest > 64 else []):
        ids = rng.integers(5, model.sizes.vocab, (1, n)).astype(np.int64)
        ids[0, 0] = tokenizer.cls_token_id
        ids[0, -1] = tokenizer.sep_token_id
        out.append((ids, np.zeros_like(ids)))
    return out


def verdict(graphs: GraphCheck, chain: ChainCheck, batch: BatchCheck | None = None) -> list[str]:
    """The fp32 pass/fail decision: every graph output within ATOL of PyTorch, and the chain (and the batch
    graphs, when there are any) agreeing with the PyTorch model on exit layer and label (and tokens per layer)
    for at least MIN_AGREEMENT of the examples. Returns the problems."""
    bad = [f"{k}: {v:.2e}" for k, v in graphs.max_abs_diff.items() if v > ATOL["fp32"]]
    problems = graphs.errors + bad
    if chain.same_exit_layer < MIN_AGREEMENT or chain.same_label < MIN_AGREEMENT:
        problems.append(f"chain agreement exit {chain.same_exit_layer:.4f} label {chain.same_label:.4f} "
                        f"< {MIN_AGREEMENT}")
    if batch is not None and min(batch.same_exit_layer, batch.same_label, batch.same_tokens_per_layer) < MIN_AGREEMENT:
        problems.append(f"batch agreement exit {batch.same_exit_layer:.4f} label {batch.same_label:.4f} tokens "
                        f"{batch.same_tokens_per_layer:.4f} < {MIN_AGREEMENT}")
    return problems


def validate_bundle(model: MpeeModel, folder: Path, manifest: Manifest, examples, labels=None, *,
                    precision: str = "fp32") -> Validation:
    """Graph-level and chain-level checks of the bundle at `folder` (described by `manifest`) against `model`,
    at the bundle's default exit rule and at full depth. fp32 is judged; int8 is reported (`passed` None):
    its accuracy and exit shift are the point, not bit parity."""
    graphs = check_graphs(model, folder, manifest.graphs, examples[:8])
    engine = exporter_engine(folder, manifest)
    policy, threshold = manifest.exit.default_policy, manifest.exit.default_threshold
    chain = check_chain(model, engine, examples, policy=policy, threshold=threshold, labels=labels)
    full = check_chain(model, engine, examples, **NO_EXIT, labels=labels)
    batch = check_batches(model, engine, examples, policy=policy, threshold=threshold)
    if precision != "fp32":
        return Validation(precision, graphs, chain, full, None, batch=batch)
    problems = verdict(graphs, chain, batch)
    return Validation(precision, graphs, chain, full, not problems, problems, batch)
