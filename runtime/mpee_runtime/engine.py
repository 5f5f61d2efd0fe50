"""MpeeEngine: load a bundle, chain the layer graphs, stop at the first confident exit (docs/design.md 6)."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter_ns

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from . import schema as S
from . import truncation
from .data import WORD_CHARS, cut_text, max_chars_for
from .errors import MpeeRuntimeError
from .grouping import length_groups
from .policy import NO_EXIT, STATEFUL, ExitPolicy
from .session import global_pool_width, open_session, session_options


@dataclass
class Prediction:
    label: str
    label_index: int
    probs: list[float]
    exit_layer: int                      # 1-based
    tokens_per_layer: list[int]          # tokens entering each executed layer's attention
    ffn_tokens_per_layer: list[int]      # tokens in each executed layer's FFN (after pruning)
    flops: int
    rho: float
    rho_pad128: float
    timings_us: dict = field(default_factory=dict)  # tokenize, embeddings, layers (list), total
    layer_probs: list[list[float]] | None = None    # with record=True: every executed layer's probs
    layer_entropies: list[float] | None = None
    chars_cut: bool = False                         # the text or pair was cut to max_chars (data.cut_text)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


_CACHE_SIZE = 64   # exit rules and keep-ratio feeds kept per engine (a sweep uses a few dozen)


def _open_graph(bundle: Path, entry: S.GraphEntry, opts: ort.SessionOptions, providers: list[str],
                manifest: S.Manifest) -> ort.InferenceSession:
    """One session, refused when the file is not the graph the manifest says it is: its stamps
    (`_check_stamp`) or its input and output names differ."""
    path = bundle / entry.file
    sess = open_session(path, opts, providers=providers)
    _check_stamp(path, sess.get_modelmeta().custom_metadata_map, manifest.graph_stamp(entry))
    inputs, outputs = [i.name for i in sess.get_inputs()], [o.name for o in sess.get_outputs()]
    if inputs != entry.inputs or outputs != entry.outputs:
        raise MpeeRuntimeError(f"{path}: inputs {inputs} and outputs {outputs} differ from the manifest's "
                               f"{entry.inputs} and {entry.outputs}")
    return sess


def _check_stamp(path: Path, props: dict[str, str], want: dict[str, str]) -> None:
    """The graph's metadata stamps against the manifest's (`schema.graph_stamp`), in this order: role,
    precision, bundle, tokenizer; the first that differs is refused in one line. These hold when every
    sha256 and digest in the manifest has been re-computed around a replaced file."""
    got = {key: props.get(key) for key in want}
    role, precision = S.GRAPH_ID_KEY, S.PRECISION_KEY
    if got[role] != want[role]:
        raise MpeeRuntimeError(f"{path}: holds graph {S.shown(got[role])}, the manifest expects {want[role]!r} "
                               "(files swapped or replaced)")
    if got[precision] != want[precision]:
        raise MpeeRuntimeError(f"{path}: a {S.shown(got[precision])} graph, the manifest says {want[precision]!r} "
                               "(replaced by a graph of another export)")
    if got[S.BUNDLE_ID_KEY] != want[S.BUNDLE_ID_KEY]:
        raise MpeeRuntimeError(f"{path}: stamped for bundle {S.shown(got[S.BUNDLE_ID_KEY], 20)}, this bundle is "
                               f"{want[S.BUNDLE_ID_KEY][:16]!r}... (a graph of another bundle)")
    if got[S.TOKENIZER_KEY] != want[S.TOKENIZER_KEY]:
        raise MpeeRuntimeError(f"{path}: exported with tokenizer sha256 {S.shown(got[S.TOKENIZER_KEY], 20)}, the "
                               f"manifest's tokenizer is {want[S.TOKENIZER_KEY][:16]!r}... (tokenizer.json "
                               "replaced)")


def _open_tokenizer(bundle: Path, manifest: S.Manifest) -> Tokenizer:
    """The bundle's tokenizer, truncating to the model's length when the rule is `head` (head+tail truncates in
    truncation.encode); refused when unreadable or when its vocabulary is larger than the model's embedding
    table (ids past the table would crash onnxruntime)."""
    path = bundle / manifest.tokenizer.file
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as e:  # noqa: BLE001 -- tokenizers raises a bare Exception for malformed files
        raise MpeeRuntimeError(f"{path}: not a readable tokenizers file ({str(e)[:120]})") from None
    if tokenizer.get_vocab_size() > manifest.model.vocab_size:
        raise MpeeRuntimeError(f"{path}: vocabulary of {tokenizer.get_vocab_size()} tokens, but the model has "
                               f"{manifest.model.vocab_size} embeddings (a different model's tokenizer?)")
    tokenizer.no_padding()
    if manifest.model.truncation == "head":   # the library's own truncation is the head rule, and fastest
        tokenizer.enable_truncation(max_length=manifest.model.max_length)
    else:
        tokenizer.no_truncation()
    return tokenizer


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
    (`signing.verify_bundle`, needs `pip install 'mpee-runtime[sign]'`).
    """

    def __init__(self, bundle: str | Path, *, threads: int | None = None, spinning: bool = True,
                 warmup: int = 2, providers: list[str] | None = None, shared_arena: bool = True,
                 allow_unvalidated: bool = False, manifest: S.Manifest | None = None,
                 thread_pool: str = "session", trust: str | Path | None = None) -> None:
        self.bundle = Path(bundle)
        if trust is not None:   # signed by the key in `trust` and unchanged since, before the manifest is read
            from .signing import verify_bundle
            verify_bundle(self.bundle, trust)
        # Checked before any session exists. `manifest` lets the exporter run a bundle it has not published.
        if manifest is None:
            manifest = S.Manifest.load(self.bundle, verify=True)
        else:
            manifest.verify_files(self.bundle)
        if not manifest.validation.passed and not allow_unvalidated:
            raise MpeeRuntimeError(f"{self.bundle}: the bundle did not pass the export's parity check against "
                                   "PyTorch; pass --allow-unvalidated (allow_unvalidated=True) to run it anyway")
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
        self._sessions = [_open_graph(self.bundle, g, opts, providers, manifest) for g in manifest.graphs]
        self._batch_sessions: list[ort.InferenceSession] | None = None   # opened by the first batch
        self._batch_lock = threading.Lock()
        self._inputs = [g.inputs for g in manifest.graphs]
        self._outputs = [g.outputs for g in manifest.graphs]
        self.tokenizer = _open_tokenizer(self.bundle, manifest)
        self.truncation: str = manifest.model.truncation   # truncation.py: head, or head+tail
        # Characters of each text (and pair) tokenized at most: data.max_chars_for, docs/design.md "Input limits".
        self._word_chars = getattr(self.tokenizer.model, "max_input_chars_per_word", WORD_CHARS)
        self.max_chars: int = max_chars_for(manifest.model.max_length, self._word_chars)
        for _ in range(warmup):
            self.predict("warm up the sessions", **NO_EXIT)

    def encode(self, text: str, text_pair: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and token type ids, int64 (1, T), truncated to the model's maximum length; each text is
        first cut to `self.max_chars` characters (data.cut_text; `encode_cut` also says whether it was)."""
        ids, types, _ = self.encode_cut(text, text_pair)
        return ids, types

    def encode_cut(self, text: str, text_pair: str | None = None) -> tuple[np.ndarray, np.ndarray, bool]:
        """`encode`, and whether the text or the pair was longer than `self.max_chars` and cut."""
        tail = self.truncation != "head"
        text, cut = cut_text(text, self.max_chars, self._word_chars, tail=tail)
        cut_pair = False
        if text_pair is not None:
            text_pair, cut_pair = cut_text(text_pair, self.max_chars, self._word_chars, tail=tail)
        try:
            if text_pair is not None and (cut or cut_pair):
                enc = self._encode_cut_pair(text, text_pair, cut, cut_pair)
            elif tail:
                enc = truncation.encode(self.tokenizer, text, text_pair, self.manifest.model.max_length,
                                        self.truncation)
            else:
                enc = self.tokenizer.encode(text, text_pair)
        except TypeError:   # tokenizers refuses str objects that are not valid Unicode (lone surrogates)
            raise MpeeRuntimeError("text is not valid Unicode (it holds a lone surrogate)") from None
        return np.asarray([enc.ids], dtype=np.int64), np.asarray([enc.type_ids], dtype=np.int64), cut or cut_pair

    def _whole_tokenizer(self) -> Tokenizer:
        """The bundle's tokenizer without truncation, made on first use (two racing threads make two)."""
        if getattr(self, "_whole", None) is None:
            whole = Tokenizer.from_str(self.tokenizer.to_str())
            whole.no_truncation()
            self._whole = whole
        return self._whole

    def _encode_cut_pair(self, text: str, text_pair: str, cut: bool, cut_pair: bool):
        """A pair with a cut side, shared out longest-first as the tokenizer shares the whole pair
        (truncation.pair_budgets). A cut side counts as the longer (its whole text has more tokens than its
        kept part); two cut sides are compared by their kept parts (the whole lengths are unknown:
        docs/design.md "Input limits")."""
        whole = self._whole_tokenizer()
        a_longer = cut
        if cut == cut_pair:   # both cut: the kept parts' whole token counts (at most max_chars characters each)
            a_longer = len(whole.encode(text, add_special_tokens=False).ids) > len(
                whole.encode(text_pair, add_special_tokens=False).ids)   # a tie goes to the pair, as in tokenizers
        return truncation.encode(whole, text, text_pair, self.manifest.model.max_length, self.truncation,
                                 a_longer=a_longer)

    def predict(self, text: str, text_pair: str | None = None, *, threshold: float | None = None,
                keep_ratio: float | Sequence[float] | None = None, policy: str | None = None) -> Prediction:
        """Classify one text (or pair), stopping at the first layer the exit policy accepts; a text longer than
        `self.max_chars` is cut first (`Prediction.chars_cut`)."""
        if not isinstance(text, str) or (text_pair is not None and not isinstance(text_pair, str)):
            raise MpeeRuntimeError("text and text_pair must be strings")
        start = perf_counter_ns()
        ids, types, cut = self.encode_cut(text, text_pair)
        tokenize_ns = perf_counter_ns() - start
        pred = self.run_ids(ids, types, threshold=threshold, keep_ratio=keep_ratio, policy=policy)
        pred.chars_cut = cut
        pred.timings_us["tokenize"] = tokenize_ns / 1e3
        pred.timings_us["total"] += tokenize_ns / 1e3
        return pred

    def predict_batch(self, texts: Sequence[str], pairs: Sequence[str | None] | None = None, *,
                      threshold: float | None = None, keep_ratio: float | Sequence[float] | None = None,
                      policy: str | None = None, pad_slack: float | None = None) -> list[Prediction]:
        """Classify a batch: one `Prediction` per row, in order, each the answer `predict` gives that row alone
        (the same exit layer, label and tokens per layer; probabilities within float rounding).

        Rows run together through the batch graphs (`run_batch`); a bundle without them (exported before
        schema 5), and a batch of one, run row by row on the batch-1 graphs. With `pad_slack`, the rows are first
        cut into groups of similar length (grouping.length_groups: padded tokens at most (1 + pad_slack) x real
        ones), shortest first, each group one `run_batch` (a group of one: the batch-1 graphs). Each row's
        `timings_us["total"]` is the time from the batch's start to its own answer. Refused in one line: not a
        list of strings, empty, pairs of another length, a bad knob, a negative pad_slack.
        """
        texts, pairs = check_batch(texts, pairs)
        if pad_slack is not None and not pad_slack >= 0:
            raise MpeeRuntimeError(f"pad slack must be a number >= 0, got {pad_slack}")
        knobs = {"threshold": threshold, "keep_ratio": keep_ratio, "policy": policy}
        if len(texts) == 1 or not self.manifest.supports_batches:
            return [self.predict(t, p, **knobs) for t, p in zip(texts, pairs)]
        start = perf_counter_ns()
        encoded = [self.encode_cut(t, p) for t, p in zip(texts, pairs)]
        tokenize_us = (perf_counter_ns() - start) / 1e3
        groups = ([list(range(len(encoded)))] if pad_slack is None
                  else length_groups([ids.shape[1] for ids, _, _ in encoded], pad_slack))
        preds: list[Prediction | None] = [None] * len(encoded)
        for group in groups:
            offset_us = (perf_counter_ns() - start) / 1e3   # tokenizing and the groups run before this one
            if len(group) == 1:
                ids, types, _ = encoded[group[0]]
                got = [self.run_ids(ids, types, **knobs)]
            else:
                got = self.run_batch([encoded[j][0][0] for j in group], [encoded[j][1][0] for j in group], **knobs)
            for j, pred in zip(group, got):
                pred.chars_cut = encoded[j][2]
                pred.timings_us["tokenize"] = tokenize_us
                pred.timings_us["total"] += offset_us
                preds[j] = pred
        return preds

    def batch_sessions(self) -> list[ort.InferenceSession]:
        """The batch layer graphs' sessions, opened (and checked, as the batch-1 graphs are) on first use, so an
        engine that never runs a batch pays nothing for them."""
        if not self.manifest.supports_batches:
            raise MpeeRuntimeError(f"{self.bundle}: this bundle has no batch graphs (exported before schema 5, "
                                   "or with --no-batch-graphs): re-export it to run rows together")
        with self._batch_lock:
            if self._batch_sessions is None:
                opts, providers = self._session_args
                self._batch_sessions = [_open_graph(self.bundle, g, opts, providers, self.manifest)
                                        for g in self.manifest.batch_graphs]
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
                    raise MpeeRuntimeError(f"keep ratio must be in (0, 1], got {r}")
            if len(self._ratio_feeds) >= _CACHE_SIZE:
                self._ratio_feeds.clear()
            feeds = self._ratio_feeds[key] = {i: np.asarray(r, dtype=np.float32)
                                              for i, r in zip(sorted(self.default_keep_ratios), ratios)}
        return feeds

    def run_ids(self, input_ids: np.ndarray, token_type_ids: np.ndarray, *, threshold: float | None = None,
                keep_ratio: float | Sequence[float] | None = None, policy: str | None = None, record: bool = False
                ) -> Prediction:
        """Run the chain on token ids (1, T) int64; `record` keeps every executed layer's prediction."""
        rule = self.exit_rule(policy, threshold)
        ratios = self.keep_ratio_feeds(keep_ratio)
        sessions, inputs, outputs = self._sessions, self._inputs, self._outputs
        layer_ns = []
        t0 = perf_counter_ns()
        (hidden,) = sessions[0].run(outputs[0], {S.INPUT_IDS: input_ids, S.TOKEN_TYPE_IDS: token_type_ids})
        embed_ns = perf_counter_ns() - t0
        state = {S.HIDDEN: hidden}
        attn_lens, ffn_lens, trace_p, trace_h = [], [], [], []
        for i in range(self.num_layers):
            if i in ratios:
                state[S.KEEP_RATIO] = ratios[i]
            attn_lens.append(state[S.HIDDEN].shape[1])
            t = perf_counter_ns()
            hidden, scores, memory, probs, entropy = sessions[i + 1].run(
                outputs[i + 1], {name: state[name] for name in inputs[i + 1]})
            layer_ns.append(perf_counter_ns() - t)
            ffn_lens.append(hidden.shape[1])
            state[S.HIDDEN], state[S.SCORES], state[S.MEMORY] = hidden, scores, memory
            if record:
                trace_p.append([float(x) for x in probs[0]])
                trace_h.append(float(entropy[0]))
            if self.layer_exit and rule.should_exit(probs[0], float(entropy[0])):
                break
        total_ns = perf_counter_ns() - t0
        timings = {"embeddings": embed_ns / 1e3, "layers": [x / 1e3 for x in layer_ns], "total": total_ns / 1e3}
        return self._prediction(int(input_ids.shape[1]), attn_lens, ffn_lens, probs[0], timings,
                                (trace_p, trace_h) if record else None)

    def run_batch(self, input_ids: Sequence[np.ndarray], token_type_ids: Sequence[np.ndarray], *,
                  threshold: float | None = None, keep_ratio: float | Sequence[float] | None = None,
                  policy: str | None = None, record: bool = False) -> list[Prediction]:
        """Run rows of token ids (each (T_i,) int64) together; one `Prediction` per row, in order.

        The rows are right-padded to the longest; after each layer every row whose exit fires (its own rule
        object: patience and depth count per row) leaves the batch with its answer, and the rows that go on
        are cut to their own longest row. When one row is left it finishes on the batch-1 graphs.
        """
        rules = [self.exit_rule(policy, threshold) for _ in input_ids]
        ratios = self.keep_ratio_feeds(keep_ratio)
        batch_sessions, entries = self.batch_sessions(), self.manifest.batch_graphs
        n_rows = len(input_ids)
        lengths = np.asarray([len(r) for r in input_ids], dtype=np.int64)
        ids = np.zeros((n_rows, int(lengths.max())), dtype=np.int64)
        types = np.zeros_like(ids)
        for j, (a, b) in enumerate(zip(input_ids, token_type_ids)):
            ids[j, :len(a)], types[j, :len(b)] = a, b
        t0 = perf_counter_ns()
        (hidden,) = self._sessions[0].run(self._outputs[0], {S.INPUT_IDS: ids, S.TOKEN_TYPE_IDS: types})
        embed_us = (perf_counter_ns() - t0) / 1e3
        state = {S.HIDDEN: hidden, S.LENGTHS: lengths}
        rows = np.arange(n_rows)                      # the original index of each row still running
        attn = [[] for _ in range(n_rows)]
        ffn = [[] for _ in range(n_rows)]
        traces = [([], []) for _ in range(n_rows)]
        layer_us: list[float] = []
        preds: list[Prediction | None] = [None] * n_rows
        for i in range(self.num_layers):
            if i in ratios:
                state[S.KEEP_RATIO] = ratios[i]
            t = perf_counter_ns()
            if len(rows) == 1:   # one row left: the batch-1 graph, faster and the same answer
                n = int(state[S.LENGTHS][0])
                cut = {S.HIDDEN: n, S.SCORES: n - 1}
                feeds = {k: np.ascontiguousarray(state[k][:, :cut[k]]) if k in cut else state[k]
                         for k in self._inputs[i + 1]}
                out = self._sessions[i + 1].run(self._outputs[i + 1], feeds)
                out.append(np.asarray([out[0].shape[1]], dtype=np.int64))
            else:
                out = batch_sessions[i].run(entries[i].outputs, {k: state[k] for k in entries[i].inputs})
            layer_us.append((perf_counter_ns() - t) / 1e3)
            hidden, scores, memory, probs, entropy, new_lengths = out
            stay = []
            for j, r in enumerate(rows):
                attn[r].append(int(state[S.LENGTHS][j]))
                ffn[r].append(int(new_lengths[j]))
                if record:
                    traces[r][0].append([float(x) for x in probs[j]])
                    traces[r][1].append(float(entropy[j]))
                if (self.layer_exit and rules[r].should_exit(probs[j], float(entropy[j]))) or i == self.num_layers - 1:
                    timings = {"embeddings": embed_us, "layers": list(layer_us),
                               "total": (perf_counter_ns() - t0) / 1e3}
                    preds[r] = self._prediction(len(input_ids[r]), attn[r], ffn[r], probs[j], timings,
                                                traces[r] if record else None)
                else:
                    stay.append(j)
            if not stay:
                break
            if len(stay) < len(rows):
                n = int(new_lengths[stay].max())
                hidden, scores = np.ascontiguousarray(hidden[stay, :n]), np.ascontiguousarray(scores[stay, :n - 1])
                memory, new_lengths, rows = memory[stay], new_lengths[stay], rows[stay]
            state.update({S.HIDDEN: hidden, S.SCORES: scores, S.MEMORY: memory, S.LENGTHS: new_lengths})
        return preds

    def _prediction(self, input_len: int, attn_lens: list[int], ffn_lens: list[int], probs: np.ndarray,
                    timings: dict, trace: tuple[list, list] | None = None) -> Prediction:
        """One row's answer from what its executed layers gave: label, FLOPs and rho at its own input length."""
        p = probs.astype(float)
        label = int(p.argmax())
        fm = self.flops_model
        flops = fm.executed_flops(attn_lens, ffn_lens)
        rho, rho128 = fm.speedups(input_len, flops)
        return Prediction(self.labels[label], label, [float(x) for x in p], len(attn_lens), list(attn_lens),
                          list(ffn_lens), flops, rho, rho128, timings, trace[0] if trace else None,
                          trace[1] if trace else None)
