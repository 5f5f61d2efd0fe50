"""The single graph (`mpee.onnx`): the whole bundle as one ONNX model that any onnxruntime host can run.

It is composed from the bundle's own graphs, as written (fused, and quantized in an int8 bundle): the
embeddings at the top, then layer 0, then one `If` per layer whose condition is the exit rule. Its then-branch
answers with that layer's prediction; its else-branch runs the next layer and holds the next `If`. A text that
leaves at layer k therefore runs k layers in one `run` call. Each layer's weights are initializers of the
branch that runs it (a probe on onnxruntime 1.32 measured +33% at full depth when branches read the outer
graph's initializers instead, against +4% with their own).

The exit rule is the runtime's (`mpee_runtime.core.policy.ExitPolicy`), computed in float64 as it is there,
for every policy at once: the `policy` input picks one by its index in `POLICIES`. Patience carries its
streak and the last label from layer to layer; depth compares the layer number. Names of the inputs and
outputs are the contract's (`single_graph_inputs`, `SINGLE_GRAPH_OUTPUTS`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from mpee_runtime.bundle.contract import (
    CARRY,
    EMBEDDING_OUTPUTS,
    ENTROPY,
    HIDDEN,
    HIDDEN_OUT,
    KEEP_RATIO,
    KEEP_RATIOS,
    POLICY,
    PROBS,
    SINGLE_GRAPH_OUTPUTS,
    THRESHOLD,
    single_graph_inputs,
)
from mpee_runtime.bundle.manifest import Manifest
from mpee_runtime.core.engine import MpeeEngine
from mpee_runtime.core.policy import NO_EXIT, POLICIES


def _prefixed(graph: onnx.GraphProto, prefix: str, feeds: dict[str, str]
              ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], dict[str, str]]:
    """`graph`'s nodes and initializers with every value renamed `prefix + name`, its inputs bound to the values
    `feeds` names; and where each of its outputs now is."""
    def rename(value: str) -> str:
        if not value:                  # an optional input left out
            return value
        return feeds.get(value, prefix + value)
    nodes = []
    for node in graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.input[:] = [rename(v) for v in node.input]
        copy.output[:] = [rename(v) for v in node.output]
        copy.name = prefix + (node.name or node.op_type)
        nodes.append(copy)
    inits = []
    for tensor in graph.initializer:
        copy = onnx.TensorProto()
        copy.CopyFrom(tensor)
        copy.name = prefix + tensor.name
        inits.append(copy)
    return nodes, inits, {o.name: rename(o.name) for o in graph.output}


class _Composer:
    """Builds the nested graph; `nodes`/`inits` of each scope are lists the recursion fills."""

    def __init__(self, folder: Path, manifest: Manifest) -> None:
        self.manifest = manifest
        self.models = [onnx.load(str(folder / g.file)) for g in manifest.graphs]
        self.num_layers = manifest.model.num_layers
        self.num_labels = len(manifest.labels)
        self.layer_exit = manifest.exit.layer_exit
        self.pruning_layers = sorted(manifest.default_keep_ratios)

    # ------------------------------------------------------------------ small helpers
    @staticmethod
    def const(name: str, value, dtype: int, dims: list[int] | None = None) -> onnx.NodeProto:
        values = value if isinstance(value, list) else [value]
        return helper.make_node("Constant", [], [name], name=name,
                                value=helper.make_tensor(name + "_value", dtype, dims if dims is not None else [],
                                                         values))

    def exit_test(self, i: int, probs: str, entropy: str, last: str, streak: str, nodes: list
                  ) -> tuple[str, str, str]:
        """Append the exit rule after layer i; return (condition, this layer's label, its patience streak)."""
        p = f"l{i:02d}/exit/"
        log_c = math.log(self.num_labels) if self.num_labels > 1 else 1.0
        nodes += [
            helper.make_node("Cast", [entropy], [p + "h"], to=TensorProto.DOUBLE),
            helper.make_node("Less", [p + "h", THRESHOLD], [p + "entropy"]),
            self.const(p + "log_c", log_c, TensorProto.DOUBLE),
            helper.make_node("Div", [p + "h", p + "log_c"], [p + "h_norm"]),
            helper.make_node("Less", [p + "h_norm", THRESHOLD], [p + "normalized_entropy"]),
            helper.make_node("ReduceMax", [probs], [p + "pmax"], axes=[1], keepdims=0),
            helper.make_node("Cast", [p + "pmax"], [p + "pmax_d"], to=TensorProto.DOUBLE),
            helper.make_node("Greater", [p + "pmax_d", THRESHOLD], [p + "max_prob"]),
            helper.make_node("ArgMax", [probs], [p + "label"], axis=1, keepdims=0),
            helper.make_node("Equal", [p + "label", last], [p + "same"]),
            self.const(p + "one", [1], TensorProto.INT64, [1]),
            helper.make_node("Add", [streak, p + "one"], [p + "longer"]),
            helper.make_node("Where", [p + "same", p + "longer", p + "one"], [p + "streak"]),
            helper.make_node("Cast", [p + "streak"], [p + "streak_d"], to=TensorProto.DOUBLE),
            helper.make_node("Greater", [p + "streak_d", THRESHOLD], [p + "patience"]),
            self.const(p + "layers", [float(i + 1)], TensorProto.DOUBLE, [1]),
            helper.make_node("GreaterOrEqual", [p + "layers", THRESHOLD], [p + "depth"]),
            helper.make_node("Concat", [p + name for name in POLICIES], [p + "all"], axis=0),
            helper.make_node("Gather", [p + "all", POLICY], [p + "exit"], axis=0),
        ]
        return p + "exit", p + "label", p + "streak"

    def layer(self, i: int, carry: dict[str, str], tokens: str | None, ffn_tokens: str | None, last: str,
              streak: str, nodes: list, inits: list) -> list[str]:
        """Append layer i (and, through the `If`s, every later one) to `nodes`/`inits`; return the values that
        hold the answer (SINGLE_GRAPH_OUTPUTS' order)."""
        p = f"l{i:02d}/"
        graph = self.models[i + 1].graph
        feeds = {name: carry[name] for name in (x.name for x in graph.input) if name != KEEP_RATIO}
        if i in self.pruning_layers:
            feeds[KEEP_RATIO] = f"keep_ratio_{i:02d}"
        layer_nodes, layer_inits, out = _prefixed(graph, p, feeds)
        nodes += layer_nodes
        inits += layer_inits
        # Tokens entering the layer (attention) and leaving its pruning step (feed-forward), appended to the lists.
        nodes += [helper.make_node("Shape", [feeds[HIDDEN]], [p + "n_in"], start=1, end=2),
                  helper.make_node("Shape", [out[HIDDEN_OUT]], [p + "n_out"], start=1, end=2)]
        if tokens is None:
            nodes += [helper.make_node("Identity", [p + "n_in"], [p + "tokens"]),
                      helper.make_node("Identity", [p + "n_out"], [p + "ffn_tokens"])]
        else:
            nodes += [helper.make_node("Concat", [tokens, p + "n_in"], [p + "tokens"], axis=0),
                      helper.make_node("Concat", [ffn_tokens, p + "n_out"], [p + "ffn_tokens"], axis=0)]
        answer = [out[PROBS], None, p + "tokens", p + "ffn_tokens"]
        next_carry = {CARRY[name]: value for name, value in out.items() if name in CARRY}
        if i == self.num_layers - 1:
            nodes.append(self.const(p + "exit_layer", i + 1, TensorProto.INT64))
            answer[1] = p + "exit_layer"
            return answer
        if not self.layer_exit:   # a bundle without layer exits runs every layer
            return self.layer(i + 1, next_carry, p + "tokens", p + "ffn_tokens", last, streak, nodes, inits)
        cond, label, streak_i = self.exit_test(i, out[PROBS], out[ENTROPY], last, streak, nodes)
        then_nodes = [self.const(p + "then/layer", i + 1, TensorProto.INT64)]
        then_values = [out[PROBS], p + "then/layer", p + "tokens", p + "ffn_tokens"]
        else_nodes, else_inits = [], []
        else_values = self.layer(i + 1, next_carry, p + "tokens", p + "ffn_tokens", label, streak_i, else_nodes,
                                 else_inits)
        branches = {}
        for side, side_nodes, side_inits, values in (("then", then_nodes, [], then_values),
                                                      ("else", else_nodes, else_inits, else_values)):
            names = [f"{p}{side}/{o}" for o in SINGLE_GRAPH_OUTPUTS]
            side_nodes += [helper.make_node("Identity", [v], [n]) for v, n in zip(values, names)]
            branches[side] = helper.make_graph(side_nodes, f"{p}{side}", [], self.output_infos(names), side_inits)
        outs = [f"{p}if/{o}" for o in SINGLE_GRAPH_OUTPUTS]
        nodes.append(helper.make_node("If", [cond], outs, name=p + "if", then_branch=branches["then"],
                                      else_branch=branches["else"]))
        return outs

    def output_infos(self, names: list[str]) -> list[onnx.ValueInfoProto]:
        c = self.num_labels
        return [helper.make_tensor_value_info(names[0], TensorProto.FLOAT, [1, c]),
                helper.make_tensor_value_info(names[1], TensorProto.INT64, []),
                helper.make_tensor_value_info(names[2], TensorProto.INT64, ["layers_run"]),
                helper.make_tensor_value_info(names[3], TensorProto.INT64, ["layers_run"])]

    def compose(self) -> onnx.ModelProto:
        emb = self.models[0].graph
        emb_inputs = [x.name for x in emb.input]
        nodes, inits, emb_out = _prefixed(emb, "emb/", {name: name for name in emb_inputs})
        inputs = [helper.make_tensor_value_info(name, TensorProto.INT64, [1, "seq"]) for name in emb_inputs]
        inputs += [helper.make_tensor_value_info(THRESHOLD, TensorProto.DOUBLE, []),
                   helper.make_tensor_value_info(POLICY, TensorProto.INT64, [])]
        if self.pruning_layers:
            inputs.append(helper.make_tensor_value_info(KEEP_RATIOS, TensorProto.FLOAT, [len(self.pruning_layers)]))
            for j, i in enumerate(self.pruning_layers):
                nodes += [self.const(f"keep_ratio_{i:02d}/index", j, TensorProto.INT64),
                          helper.make_node("Gather", [KEEP_RATIOS, f"keep_ratio_{i:02d}/index"],
                                           [f"keep_ratio_{i:02d}"], axis=0)]
        nodes += [self.const("start/last", [-1], TensorProto.INT64, [1]),
                  self.const("start/streak", [0], TensorProto.INT64, [1])]
        answer = self.layer(0, {HIDDEN: emb_out[EMBEDDING_OUTPUTS[0]]}, None, None, "start/last", "start/streak", nodes,
                            inits)
        nodes += [helper.make_node("Identity", [v], [o]) for v, o in zip(answer, SINGLE_GRAPH_OUTPUTS)]
        assert [x.name for x in inputs] == single_graph_inputs(emb_inputs, bool(self.pruning_layers))
        graph = helper.make_graph(nodes, "mpee", inputs, self.output_infos(list(SINGLE_GRAPH_OUTPUTS)), inits)
        opsets: dict[str, int] = {}
        for m in self.models:
            for o in m.opset_import:
                opsets[o.domain] = max(opsets.get(o.domain, 0), o.version)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())],
                                  producer_name="mpee-export")
        model.ir_version = max(m.ir_version for m in self.models)
        return model



def compose_single_graph(folder: Path, manifest: Manifest) -> onnx.ModelProto:
    """The single graph of the bundle in `folder` (its batch-1 graphs as `manifest` lists them)."""
    return _Composer(folder, manifest).compose()


@dataclass(frozen=True)
class SingleGraphCheck:
    """The single graph against the chain of the same bundle (same precision) on the validation examples, at
    several exit rules and keep ratios chosen so that the exits spread over the layers (`spread_settings`).
    Passed: every run gives the chain's exit layer, label and tokens per layer, probabilities within
    PROB_ATOL."""

    examples: int
    settings: list[dict]                 # {"policy", "threshold", "keep_ratio"} tried on every example
    same_exit_layer: float
    same_label: float
    same_tokens_per_layer: float
    max_prob_diff: float
    exit_layers: dict[str, int]          # exit layer histogram over every run: the exits the check covered
    passed: bool

    @classmethod
    def from_dict(cls, d: dict) -> SingleGraphCheck:
        return cls(**d)

    def describe(self) -> str:
        runs = sum(self.exit_layers.values())
        return (f"single graph (mpee.onnx): {'PASSED' if self.passed else 'FAILED'} against the chain on {runs} runs "
                f"({self.examples} examples x {len(self.settings)} exit rules, exits at layers "
                f"{', '.join(self.exit_layers)}): same exit layer {self.same_exit_layer:.4f}, label "
                f"{self.same_label:.4f}, tokens per layer {self.same_tokens_per_layer:.4f}, max |prob diff| "
                f"{self.max_prob_diff:.2e}")


PROB_ATOL = 1e-5
# Examples of the check (the first of the validation examples): both engines run the same kernels, so a few dozen
# texts at ten exit rules cover every layer's branch; more would cost a 12-layer model at 512 tokens minutes.
CHECK_EXAMPLES = 64


def spread_settings(chain: MpeeEngine, examples) -> list[dict]:
    """Exit rules whose exits spread over the layers on `examples`: entropy thresholds at quartiles of the
    entropies the chain sees at full depth (and 0: every layer), at the bundle's keep ratios and without pruning;
    one max-prob and one patience rule."""
    traces = [chain.run_ids(ids, types, **NO_EXIT, record=True) for ids, types in examples]
    entropies = np.concatenate([t.layer_entropies for t in traces])
    quartiles = sorted({round(float(q), 6) for q in np.quantile(entropies, [0.25, 0.5, 0.75])})
    ratios = [None] + ([1.0] if chain.default_keep_ratios else [])
    settings = [{"policy": "entropy", "threshold": t, "keep_ratio": r} for r in ratios for t in [0.0, *quartiles]]
    settings += [{"policy": "max_prob", "threshold": 0.9, "keep_ratio": None},
                 {"policy": "patience", "threshold": 1, "keep_ratio": None}]
    return settings


def check_single_graph(folder: Path, manifest: Manifest, examples, threads: int = 2) -> SingleGraphCheck:
    """Run the bundle in `folder` both ways (the chain, the single graph) on the first CHECK_EXAMPLES of
    `examples` (token ids and types)."""
    examples = list(examples)[:CHECK_EXAMPLES]
    common = {"threads": threads, "warmup": 0, "manifest": manifest, "allow_unvalidated": True, "spinning": False}
    chain, graph = MpeeEngine(folder, **common), MpeeEngine(folder, engine="graph", **common)
    settings = spread_settings(chain, examples)
    same_exit = same_label = same_tokens = 0
    max_diff = 0.0
    exits: dict[int, int] = {}
    for knobs in settings:
        for ids, types in examples:
            want, got = chain.run_ids(ids, types, **knobs), graph.run_ids(ids, types, **knobs)
            same_exit += got.exit_layer == want.exit_layer
            same_label += got.label_index == want.label_index
            same_tokens += (got.tokens_per_layer == want.tokens_per_layer
                            and got.ffn_tokens_per_layer == want.ffn_tokens_per_layer)
            if got.exit_layer == want.exit_layer:
                max_diff = max(max_diff, float(np.abs(np.asarray(got.probs) - want.probs).max()))
            exits[want.exit_layer] = exits.get(want.exit_layer, 0) + 1
    runs = len(settings) * len(examples)
    passed = same_exit == same_label == same_tokens == runs and max_diff <= PROB_ATOL
    return SingleGraphCheck(len(examples), settings, same_exit / runs, same_label / runs, same_tokens / runs,
                            max_diff, {str(k): v for k, v in sorted(exits.items())}, passed)
