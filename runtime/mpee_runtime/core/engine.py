"""MpeeEngine: load a bundle, chain the layer graphs, stop at the first confident exit (docs/design.md 6)."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from time import perf_counter_ns

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from ..bundle.contract import (
    HIDDEN,
    INPUT_IDS,
    KEEP_RATIO,
    KEEP_RATIOS,
    MEMORY,
    POLICY,
    POSITIONS,
    SCORES,
    THRESHOLD,
    TOKEN_TYPE_IDS,
)
from ..bundle.manifest import LengthPoint, Manifest
from ..errors import MpeeRuntimeError, shown
from ..text.encoder import TextEncoder
from .batch import run_rows
from .graphs import open_graph
from .padding import length_groups
from .policy import NO_EXIT, POLICIES, STATEFUL, BatchExitRule, ExitPolicy
from .prediction import Prediction
from .session import global_pool_width, session_options

_CACHE_SIZE = 64   # exit rules and keep-ratio feeds kept per engine (a sweep uses a few dozen)
# How a batch-1 row runs: "chain", one onnxruntime call per graph from Python, stopping after the exit layer;
# "graph", one call of the bundle's single graph (mpee.onnx), whose `If` nodes stop there.
ENGINES = ("chain", "graph")


def check_batch(texts: Sequence[str], pairs: Sequence[str | None] | None) -> tuple[list[str], list[str | None]]:
    """The rows of a batch as lists; refused in one line: not a list or tuple, empty, a row that is not a string,
    or pairs of another length."""
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise MpeeRuntimeError(f"a batch is a list of strings, got {type(texts).__name__}")
    if len(texts) == 0:
        raise MpeeRuntimeError("empty batch: give at least one text")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise MpeeRuntimeError(f"batch row {i}: text must be a string, got {type(t).__name__}")
    if pairs is None:
        return texts, [None] * len(texts)
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence):
        raise MpeeRuntimeError(f"pairs is a list of strings (or None per row), got {type(pairs).__name__}")
    pairs = list(pairs)
    if len(pairs) != len(texts):
        raise MpeeRuntimeError(f"{len(texts)} texts but {len(pairs)} pairs")
    for i, p in enumerate(pairs):
        if p is not None and not isinstance(p, str):
            raise MpeeRuntimeError(f"batch row {i}: text_pair must be a string or None, got {type(p).__name__}")
    return texts, pairs


class MpeeEngine:
    """A loaded bundle. Create once, then call `predict` per request (batch 1).

    `threads` sets the intra-op pool's width (default: min(cores, 4)); `thread_pool` "session" (default)
    gives each graph its own pool, whose threads spin while a run lasts when `spinning`; "global" runs every
    graph on onnxruntime's process-wide pool (see `session_options`; `self.thread_pool` and `self.threads`
    say what was used); `shared_arena` places all sessions' intermediate tensors in one process-wide
    onnxruntime arena. `trust` (a public key file) refuses a bundle not signed with its key, or changed since
    (`bundle.signing.verify_bundle`, needs `pip install 'mpee-runtime[sign]'`).

    `engine` (ENGINES) says how a batch-1 row runs: "chain" (the layer graphs one by one) or "graph" (the
    bundle's single graph, mpee.onnx, in one call; the answers are the chain's). With "graph", the chain's
    sessions open on first use only: `run_ids(record=True)` (every layer's prediction, which the single graph
    does not return) and batches run on them.
    """

    def __init__(self, bundle: str | Path, *, threads: int | None = None, spinning: bool = True,
                 warmup: int = 2, providers: list[str] | None = None, shared_arena: bool = True,
                 allow_unvalidated: bool = False, manifest: Manifest | None = None,
                 thread_pool: str = "session", trust: str | Path | None = None, engine: str = "chain") -> None:
        if engine not in ENGINES:
            raise MpeeRuntimeError(f"engine must be one of {', '.join(ENGINES)}, got {shown(engine)}")
        self.bundle = Path(bundle)
        if trust is not None:   # signed by the key in `trust` and unchanged since, before the manifest is read
            from ..bundle.signing import verify_bundle
            verify_bundle(self.bundle, trust)
        # Checked before any session exists. `manifest` lets the exporter run a bundle it has not published.
        if manifest is None:
            manifest = Manifest.load(self.bundle, verify=True)
        else:
            manifest.verify_files(self.bundle)
        if not manifest.validation.passed and not allow_unvalidated:
            raise MpeeRuntimeError(f"{self.bundle}: the bundle did not pass the export's parity check against "
                                   "PyTorch; pass --allow-unvalidated (allow_unvalidated=True) to run it anyway")
        if engine == "graph" and manifest.single_graph is None:
            raise MpeeRuntimeError(f"{self.bundle}: this bundle has no single graph (mpee.onnx: exported before "
                                   "schema 8, or with --no-single-graph); run it with the chain engine")
        self.engine = engine
        self.manifest = manifest
        self.labels: list[str] = list(manifest.labels)
        self.num_layers: int = manifest.model.num_layers
        self.threads = threads or max(1, min(os.cpu_count() or 1, 4))
        self.spinning = spinning
        self.flops_model = manifest.flops_model()
        self.default_policy, self.default_threshold = manifest.exit.default_policy, manifest.exit.default_threshold
        self.layer_exit = manifest.exit.layer_exit
        self.default_keep_ratios = manifest.default_keep_ratios
        self._default_ratio_feeds = {i: np.asarray(r, dtype=np.float32) for i, r in self.default_keep_ratios.items()}
        self._ratio_feeds: dict[float, dict[int, np.ndarray]] = {}
        self._rules: dict[tuple[str, float], ExitPolicy] = {}
        opts = session_options(self.threads, spinning, shared_arena, thread_pool)
        self.thread_pool = "session" if opts.use_per_session_threads else "global"
        self.threads = self.threads if opts.use_per_session_threads else global_pool_width()
        providers = providers or ["CPUExecutionProvider"]
        self._session_args = (opts, providers)
        self._sessions: list[ort.InferenceSession] | None = None
        self._sessions_lock = threading.Lock()
        self._single: ort.InferenceSession | None = None
        if engine == "graph":
            self._single = open_graph(self.bundle, manifest.single_graph, opts, providers, manifest)
            self._single_outputs = list(manifest.single_graph.outputs)
        else:
            self._open_chain()   # now: a graph onnxruntime refuses is refused before any request
        self._batch_sessions: list[ort.InferenceSession] | None = None   # opened by the first batch
        self._batch_lock = threading.Lock()
        self.input_names = [g.inputs for g in manifest.graphs]
        # What the embeddings graph reads: token ids, and token types where the family has them (schema 6).
        self._types_fed = TOKEN_TYPE_IDS in manifest.graphs[0].inputs
        # Schema 7, relative-position families: each layer's last output is the tokens' positions, the next's input.
        self.carries_positions = manifest.model.relative_positions
        self.output_names = [g.outputs for g in manifest.graphs]
        # The sessions own the cores: tokenizers' own thread pool, woken by every encode_batch, competes with
        # them (measured on 2 cores: 3-9% fewer texts/s at batch 64, benchmarks/results/restructure_rooms).
        # The batch is still tokenized in one call, on this thread. A value the user set is kept.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.text = TextEncoder.of_bundle(self.bundle, manifest)
        self.tokenizer: Tokenizer = self.text.tokenizer
        self.truncation: str = self.text.truncation   # text/truncation.py: head, or head+tail
        # Characters of each text (and pair) tokenized at most: readers.max_chars_for, docs/design.md "Input limits".
        self.max_chars: int = self.text.max_chars
        for _ in range(warmup):
            self.predict("warm up the sessions", **NO_EXIT)

    def encode(self, text: str, text_pair: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and token type ids, int64 (1, T), truncated to the model's maximum length; each text is
        first cut to `self.max_chars` characters (readers.cut_text; `encode_cut` also says whether it was)."""
        ids, types, _ = self.text.encode(text, text_pair)
        return ids, types

    def encode_cut(self, text: str, text_pair: str | None = None) -> tuple[np.ndarray, np.ndarray, bool]:
        """`encode`, and whether the text or the pair was longer than `self.max_chars` and cut."""
        return tuple(self.text.encode(text, text_pair))

    def predict(self, text: str, text_pair: str | None = None, *, threshold: float | None = None,
                keep_ratio: float | Sequence[float] | None = None, policy: str | None = None) -> Prediction:
        """Classify one text (or pair), stopping at the first layer the exit policy accepts; a text longer than
        `self.max_chars` is cut first (`Prediction.chars_cut`)."""
        if not isinstance(text, str) or (text_pair is not None and not isinstance(text_pair, str)):
            raise MpeeRuntimeError("text and text_pair must be strings")
        start = perf_counter_ns()
        ids, types, cut = self.text.encode(text, text_pair)
        tokenize_us = (perf_counter_ns() - start) / 1e3
        return self.run_ids(ids, types, threshold=threshold, keep_ratio=keep_ratio, policy=policy,
                            tokenize_us=tokenize_us, chars_cut=cut, offset_us=tokenize_us)

    def predict_batch(self, texts: Sequence[str], pairs: Sequence[str | None] | None = None, *,
                      threshold: float | None = None, keep_ratio: float | Sequence[float] | None = None,
                      policy: str | None = None, pad_slack: float | None = None) -> list[Prediction]:
        """Classify a batch: one `Prediction` per row, in order, each the answer `predict` gives that row alone
        (the same exit layer, label and tokens per layer; probabilities within float rounding).

        The rows are tokenized together (`TextEncoder.encode_batch`) and run together through the batch graphs
        (`run_batch`); a bundle without them (exported before schema 5), and a batch of one, run row by row on
        the batch-1 graphs. With `pad_slack`, the rows are first cut into groups of similar length
        (padding.length_groups: padded tokens at most (1 + pad_slack) x real ones), shortest first, each group
        one `run_batch` (a group of one: the batch-1 graphs). Each row's `timings_us["total"]` is the time from
        the batch's start to its own answer. Refused in one line: not a list of strings, empty, pairs of another
        length, a bad knob, a negative pad_slack.
        """
        texts, pairs = check_batch(texts, pairs)
        if pad_slack is not None and not pad_slack >= 0:
            raise MpeeRuntimeError(f"pad slack must be a number >= 0, got {pad_slack}")
        knobs = {"threshold": threshold, "keep_ratio": keep_ratio, "policy": policy}
        if len(texts) == 1 or not self.manifest.supports_batches:
            return [self.predict(t, p, **knobs) for t, p in zip(texts, pairs)]
        self.exit_rule(policy, threshold)   # a bad knob is refused before any work
        self.keep_ratio_feeds(keep_ratio)
        start = perf_counter_ns()
        encoded = self.text.encode_batch(texts, pairs)
        tokenize_us = (perf_counter_ns() - start) / 1e3
        groups = ([list(range(len(encoded)))] if pad_slack is None
                  else length_groups([e.ids.shape[1] for e in encoded], pad_slack))
        preds: list[Prediction | None] = [None] * len(encoded)
        for group in groups:
            offset_us = (perf_counter_ns() - start) / 1e3   # tokenizing and the groups run before this one
            rows = [encoded[j] for j in group]
            if len(group) == 1:
                got = [self.run_ids(rows[0].ids, rows[0].types, **knobs, tokenize_us=tokenize_us,
                                    chars_cut=rows[0].cut, offset_us=offset_us)]
            else:
                got = self.run_batch([e.ids[0] for e in rows], [e.types[0] for e in rows], **knobs,
                                     tokenize_us=tokenize_us, chars_cut=[e.cut for e in rows], offset_us=offset_us)
            for j, pred in zip(group, got):
                preds[j] = pred
        return preds

    @property
    def sessions(self) -> list[ort.InferenceSession]:
        """The chain's sessions (embeddings, then each layer), opened on first use with the single graph."""
        return self._sessions if self._sessions is not None else self._open_chain()

    def _open_chain(self) -> list[ort.InferenceSession]:
        with self._sessions_lock:
            if self._sessions is None:
                self._sessions = self._open_graphs(self.manifest.graphs)
        return self._sessions

    def _open_graphs(self, entries) -> list[ort.InferenceSession]:
        """One checked session per manifest entry, with the engine's session options."""
        opts, providers = self._session_args
        return [open_graph(self.bundle, g, opts, providers, self.manifest) for g in entries]

    def batch_sessions(self) -> list[ort.InferenceSession]:
        """The batch layer graphs' sessions, opened (and checked, as the batch-1 graphs are) on first use, so an
        engine that never runs a batch pays nothing for them."""
        if not self.manifest.supports_batches:
            raise MpeeRuntimeError(f"{self.bundle}: this bundle has no batch graphs (exported before schema 5, "
                                   "or with --no-batch-graphs): re-export it to run rows together")
        with self._batch_lock:
            if self._batch_sessions is None:
                self._batch_sessions = self._open_graphs(self.manifest.batch_graphs)
        return self._batch_sessions

    def exit_rule(self, policy: str | None, threshold: float | None) -> ExitPolicy:
        """The exit rule for one request. Stateless rules are validated once and reused (validation costs
        more than the rule on a slow core); patience and depth count layers within a sample and are built fresh."""
        policy = policy or self.default_policy
        threshold = self.default_threshold if threshold is None else threshold
        key = (policy, threshold)
        rule = self._rules.get(key)
        if rule is None:
            rule = ExitPolicy(policy, threshold, len(self.labels))   # raises on a bad policy or threshold
            if policy in STATEFUL:
                return rule
            if len(self._rules) >= _CACHE_SIZE:
                self._rules.clear()
            self._rules[key] = rule
        return rule

    def length_point(self, tokens: int, threshold: float | None, keep_ratio, policy: str | None
                     ) -> LengthPoint | None:
        """The bundle's length point for a row of `tokens` tokens when the call sets no knob but (at most) the
        default policy; None otherwise, or when the bundle has no length points (manifest.exit.length_points)."""
        return self.manifest.exit.point_for(tokens) if self.knobs_unset(threshold, keep_ratio, policy) else None

    def knobs_unset(self, threshold: float | None, keep_ratio, policy: str | None) -> bool:
        """Whether a call leaves the operating point to the bundle (no knob, or only its default policy)."""
        return threshold is None and keep_ratio is None and policy in (None, self.default_policy)

    def keep_ratio_feeds(self, keep_ratio: float | Sequence[float] | None) -> dict[int, np.ndarray]:
        """Keep-ratio input of each pruning layer (built once each): the bundle's defaults (None), one ratio for
        every pruning layer, or a schedule of one ratio per pruning layer in layer order (1.0: that layer keeps
        every token, so a schedule also chooses which layers prune)."""
        if keep_ratio is None:
            return self._default_ratio_feeds
        key = keep_ratio if isinstance(keep_ratio, (int, float)) else tuple(keep_ratio)
        feeds = self._ratio_feeds.get(key)
        if feeds is None:
            ratios = [key] * len(self.default_keep_ratios) if isinstance(key, (int, float)) else list(key)
            if len(ratios) != len(self.default_keep_ratios):
                raise MpeeRuntimeError(f"a keep-ratio schedule needs {len(self.default_keep_ratios)} ratios, one per "
                                       f"pruning layer {sorted(self.default_keep_ratios)}, got {len(ratios)}")
            for r in ratios:
                if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r <= 1:
                    raise MpeeRuntimeError(f"keep ratio must be in (0, 1], got {shown(r)}")
            if len(self._ratio_feeds) >= _CACHE_SIZE:
                self._ratio_feeds.clear()
            feeds = self._ratio_feeds[key] = {i: np.asarray(r, dtype=np.float32)
                                              for i, r in zip(sorted(self.default_keep_ratios), ratios)}
        return feeds

    def embedding_feeds(self, input_ids: np.ndarray, token_type_ids: np.ndarray) -> dict[str, np.ndarray]:
        """The embeddings graph's feeds: the inputs its manifest entry names, nothing else."""
        if self._types_fed:
            return {INPUT_IDS: input_ids, TOKEN_TYPE_IDS: token_type_ids}
        return {INPUT_IDS: input_ids}

    def run_ids(self, input_ids: np.ndarray, token_type_ids: np.ndarray, *, threshold: float | None = None,
                keep_ratio: float | Sequence[float] | None = None, policy: str | None = None, record: bool = False,
                tokenize_us: float | None = None, chars_cut: bool = False, offset_us: float = 0.0) -> Prediction:
        """Run the chain on token ids (1, T) int64; `record` keeps every executed layer's prediction. What
        the caller measured before goes into the Prediction, built once: `tokenize_us` (recorded as the
        tokenizing time), `chars_cut`, and `offset_us`, the time spent before this row ran (added to the total:
        its own tokenizing, or in a batch the tokenizing and the groups before it). Without knobs, a bundle with
        length points runs the point of the row's length (`length_point`)."""
        point = self.length_point(int(input_ids.shape[1]), threshold, keep_ratio, policy)
        if point is not None:
            threshold, keep_ratio = point.threshold, point.keep_ratio
        rule = self.exit_rule(policy, threshold)   # stateful rules come fresh per request
        if self._single is not None and not record:
            return self._run_single(input_ids, token_type_ids, rule, self.keep_ratio_feeds(keep_ratio), tokenize_us,
                                    chars_cut, offset_us)
        should_exit = rule.should_exit if self.layer_exit else None
        ratios = self.keep_ratio_feeds(keep_ratio)
        sessions, inputs, outputs = self.sessions, self.input_names, self.output_names
        layer_ns = []
        t0 = perf_counter_ns()
        (hidden,) = sessions[0].run(outputs[0], self.embedding_feeds(input_ids, token_type_ids))
        embed_ns = perf_counter_ns() - t0
        state = {HIDDEN: hidden}
        attn_lens, ffn_lens, trace_p, trace_h = [], [], [], []
        positions = self.carries_positions
        for i in range(self.num_layers):
            if i in ratios:
                state[KEEP_RATIO] = ratios[i]
            attn_lens.append(state[HIDDEN].shape[1])
            t = perf_counter_ns()
            out = sessions[i + 1].run(outputs[i + 1], {name: state[name] for name in inputs[i + 1]})
            layer_ns.append(perf_counter_ns() - t)
            hidden, scores, memory, probs, entropy = out[:5]
            ffn_lens.append(hidden.shape[1])
            state[HIDDEN], state[SCORES], state[MEMORY] = hidden, scores, memory
            if positions:
                state[POSITIONS] = out[5]
            if record:
                trace_p.append([float(x) for x in probs[0]])
                trace_h.append(float(entropy[0]))
            if should_exit is not None and should_exit(probs[0], float(entropy[0])):
                break
        total_ns = perf_counter_ns() - t0
        timings = {"embeddings": embed_ns / 1e3, "layers": [x / 1e3 for x in layer_ns],
                   "total": total_ns / 1e3 + offset_us}
        if tokenize_us is not None:
            timings["tokenize"] = tokenize_us
        return Prediction.of_row(self.labels, self.flops_model, int(input_ids.shape[1]), attn_lens, ffn_lens,
                                 probs[0], timings, chars_cut=chars_cut, trace=(trace_p, trace_h) if record else None)

    def _run_single(self, input_ids: np.ndarray, token_type_ids: np.ndarray, rule: ExitPolicy,
                    ratios: dict[int, np.ndarray], tokenize_us: float | None, chars_cut: bool,
                    offset_us: float) -> Prediction:
        """`run_ids` on the single graph: one call, the exit rule inside it (contract: single_graph_inputs)."""
        feeds = self.embedding_feeds(input_ids, token_type_ids)
        feeds[THRESHOLD] = np.asarray(rule.threshold, dtype=np.float64)
        feeds[POLICY] = np.asarray(POLICIES.index(rule.policy), dtype=np.int64)
        if ratios:
            feeds[KEEP_RATIOS] = np.array([ratios[i] for i in sorted(ratios)], dtype=np.float32)
        t0 = perf_counter_ns()
        probs, _, tokens, ffn_tokens = self._single.run(self._single_outputs, feeds)
        run_us = (perf_counter_ns() - t0) / 1e3
        timings = {"graph": run_us, "total": run_us + offset_us}
        if tokenize_us is not None:
            timings["tokenize"] = tokenize_us
        return Prediction.of_row(self.labels, self.flops_model, int(input_ids.shape[1]), tokens.tolist(),
                                 ffn_tokens.tolist(), probs[0], timings, chars_cut=chars_cut)

    def run_batch(self, input_ids: Sequence[np.ndarray], token_type_ids: Sequence[np.ndarray], *,
                  threshold: float | None = None, keep_ratio: float | Sequence[float] | None = None,
                  policy: str | None = None, record: bool = False, tokenize_us: float | None = None,
                  chars_cut: Sequence[bool] | None = None, offset_us: float = 0.0) -> list[Prediction]:
        """Run rows of token ids (each (T_i,) int64) together; one `Prediction` per row, in order (the rule:
        batch.run_rows). `tokenize_us`, `chars_cut` (per row) and `offset_us` as in `run_ids`. Without knobs,
        a bundle with length points runs the rows of each point together, at that point."""
        cut = list(chars_cut or [False] * len(input_ids))
        if self.manifest.exit.length_points and self.knobs_unset(threshold, keep_ratio, policy):
            by_point: dict[LengthPoint, list[int]] = {}
            for r, ids in enumerate(input_ids):
                by_point.setdefault(self.manifest.exit.point_for(len(ids)), []).append(r)
            preds: list[Prediction | None] = [None] * len(input_ids)
            for point, rows in by_point.items():
                knobs = {"threshold": point.threshold, "keep_ratio": point.keep_ratio, "policy": policy}
                if len(rows) == 1:
                    r = rows[0]
                    got = [self.run_ids(input_ids[r][None, :], token_type_ids[r][None, :], **knobs, record=record,
                                        tokenize_us=tokenize_us, chars_cut=cut[r], offset_us=offset_us)]
                else:
                    got = self.run_batch([input_ids[r] for r in rows], [token_type_ids[r] for r in rows], **knobs,
                                         record=record, tokenize_us=tokenize_us, chars_cut=[cut[r] for r in rows],
                                         offset_us=offset_us)
                for r, pred in zip(rows, got):
                    preds[r] = pred
            return preds
        one = self.exit_rule(policy, threshold)   # the bundle's defaults filled in, checked
        rule = BatchExitRule(one.policy, one.threshold, len(self.labels), len(input_ids)) if self.layer_exit else None
        rows = run_rows(self, input_ids, token_type_ids, rule, self.keep_ratio_feeds(keep_ratio), record)
        preds = []
        for r, ids in enumerate(input_ids):
            exit_layer = int(rows.exit_layer[r])
            timings = {"embeddings": rows.embed_us, "layers": rows.layer_us[:exit_layer],
                       "total": float(rows.done_us[r]) + offset_us}
            if tokenize_us is not None:
                timings["tokenize"] = tokenize_us
            trace = None
            if record:
                trace = (rows.layer_probs[r, :exit_layer].astype(float).tolist(),
                         rows.layer_entropies[r, :exit_layer].astype(float).tolist())
            preds.append(Prediction.of_row(self.labels, self.flops_model, len(ids),
                                           rows.attn[r, :exit_layer].tolist(), rows.ffn[r, :exit_layer].tolist(),
                                           rows.probs[r], timings, chars_cut=cut[r], trace=trace))
        return preds
