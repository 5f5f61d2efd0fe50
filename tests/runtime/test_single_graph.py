"""The single graph (mpee.onnx) on the tiny bundle: the runtime's engine="graph" gives PyTorch's answers and the
chain's, for every exit policy; its file is checked like every other graph; a bundle without one is refused in
one line; the CLIs take --engine."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from mpee_runtime.bundle.contract import MANIFEST, SINGLE_GRAPH, layer_file
from mpee_runtime.bundle.integrity import seal, sha256_of
from mpee_runtime.cli.run import main as run_cli
from mpee_runtime.core.engine import MpeeEngine
from mpee_runtime.core.policy import POLICIES
from mpee_runtime.errors import MpeeRuntimeError

TEXTS = [("the movie is great", None), ("a boring film", "it was bad"), ("very good acting and plot", None),
         ("it", "the plot is not fun , not very good , and the acting was awful !")]
RULES = [("entropy", 0.0), ("entropy", 0.6), ("entropy", 0.69), ("entropy", 10.0), ("normalized_entropy", 0.99),
         ("max_prob", 0.52), ("max_prob", 0.0), ("patience", 0), ("patience", 1), ("depth", 1), ("depth", 2),
         ("depth", 3)]


@pytest.fixture(scope="module")
def engines(built) -> tuple[MpeeEngine, MpeeEngine]:
    bundle = built / "bundle"
    return MpeeEngine(bundle, threads=1), MpeeEngine(bundle, threads=1, engine="graph")


def test_same_answers_as_pytorch(engines, expected):
    _, graph = engines
    for case in expected:
        pred = graph.predict(case["text"], case["pair"], threshold=case["threshold"], keep_ratio=case["keep_ratio"],
                             policy="entropy")
        assert (pred.label, pred.exit_layer) == (case["label"], case["exit_layer"]), case
        assert pred.tokens_per_layer == case["tokens_per_layer"]
        np.testing.assert_allclose(pred.probs, case["probs"], atol=1e-5)


@pytest.mark.parametrize("keep_ratio", [None, 0.3, 1.0, [0.5, 1.0]])
def test_every_policy_as_the_chain(engines, keep_ratio):
    chain, graph = engines
    exits = set()
    for policy, threshold in RULES:
        for text, pair in TEXTS:
            want = chain.predict(text, pair, policy=policy, threshold=threshold, keep_ratio=keep_ratio)
            got = graph.predict(text, pair, policy=policy, threshold=threshold, keep_ratio=keep_ratio)
            assert (got.exit_layer, got.label) == (want.exit_layer, want.label), (policy, threshold, text)
            assert (got.tokens_per_layer, got.ffn_tokens_per_layer) == (want.tokens_per_layer,
                                                                         want.ffn_tokens_per_layer)
            assert (got.flops, got.rho) == (want.flops, want.rho)
            np.testing.assert_allclose(got.probs, want.probs, atol=1e-6)
            exits.add(got.exit_layer)
    assert exits == {1, 2, 3}


def test_one_call_and_the_chain_for_traces(engines):
    _, graph = engines
    pred = graph.predict("the movie is great", threshold=0.0)
    assert set(pred.timings_us) == {"graph", "total", "tokenize"} and pred.layer_probs is None
    ids, types = graph.encode("the movie is great")
    traced = graph.run_ids(ids, types, threshold=0.0, record=True)   # every layer's prediction: the chain's
    assert len(traced.layer_probs) == 3 and traced.exit_layer == pred.exit_layer
    assert graph.predict_batch(["great", "a boring film", "fun"], threshold=0.6)[1].exit_layer == \
        graph.predict("a boring film", threshold=0.6).exit_layer


def test_the_bad_knobs_refused_as_by_the_chain(engines):
    _, graph = engines
    for knobs, needle in (({"threshold": -1.0}, "threshold"), ({"keep_ratio": 0.0}, "keep ratio"),
                          ({"policy": "vote"}, "policy"), ({"policy": "depth", "threshold": 0}, "layer number"),
                          ({"keep_ratio": [0.5]}, "schedule")):
        with pytest.raises(MpeeRuntimeError, match=needle):
            graph.predict("x", **knobs)


def test_the_graph_holds_the_exit_rule_in_nested_ifs(built):
    onnx = pytest.importorskip("onnx")   # not in the runtime's own venv
    model = onnx.load(str(built / "bundle" / SINGLE_GRAPH))
    graph, depth = model.graph, 0
    while True:   # layer k runs inside the else-branch of the If after layer k-1
        ifs = [n for n in graph.node if n.op_type == "If"]
        if not ifs:
            break
        (node,) = ifs
        graph = next(a.g for a in node.attribute if a.name == "else_branch")
        assert graph.initializer, "each branch holds the weights of the layer it runs"
        depth += 1
    assert depth == 2   # three layers: exits after layers 1 and 2 are tested, layer 3 always answers
    inputs = [i.name for i in model.graph.input]
    assert inputs == ["input_ids", "token_type_ids", "threshold", "policy", "keep_ratios"]
    assert len(POLICIES) == 5


def _rewrite(bundle, change) -> None:
    data = json.loads((bundle / MANIFEST).read_text())
    change(data)
    (bundle / MANIFEST).write_text(json.dumps(seal(data)))


def test_a_bundle_without_it_runs_the_chain_and_refuses_graph(bundle):
    (bundle / SINGLE_GRAPH).unlink()
    _rewrite(bundle, lambda d: d.update(single_graph=None))
    assert MpeeEngine(bundle, threads=1).predict("great").exit_layer >= 1
    with pytest.raises(MpeeRuntimeError, match="no single graph .*chain engine"):
        MpeeEngine(bundle, threads=1, engine="graph")
    with pytest.raises(MpeeRuntimeError, match="engine must be one of chain, graph"):
        MpeeEngine(bundle, threads=1, engine="fast")


def test_its_file_is_checked_like_every_graph(bundle):
    path = bundle / SINGLE_GRAPH
    saved = path.read_bytes()
    path.write_bytes(saved + b"\0")
    with pytest.raises(MpeeRuntimeError, match="mpee.onnx does not match its sha256"):
        MpeeEngine(bundle, threads=1)
    # Another graph of the bundle in its place, with the manifest's sha256 re-computed: its stamp gives it away.
    shutil.copy(bundle / layer_file(0), path)
    _rewrite(bundle, lambda d: d["single_graph"].update(sha256=sha256_of(path)))
    with pytest.raises(MpeeRuntimeError, match="holds graph 'layer_00', the manifest expects 'mpee'"):
        MpeeEngine(bundle, threads=1, engine="graph")
    _rewrite(bundle, lambda d: d["single_graph"].update(inputs=["input_ids", "threshold"]))
    with pytest.raises(MpeeRuntimeError, match="single_graph has inputs"):
        MpeeEngine(bundle, threads=1)


def test_mpee_run_engine_graph_answers_as_the_chain(built, capsys):
    answers = {}
    for engine in ("chain", "graph"):
        assert run_cli([str(built / "bundle"), "a boring film", "--threshold", "0.6", "--engine", engine]) == 0
        answers[engine] = json.loads(capsys.readouterr().out)
    keys = ("label", "exit_layer", "tokens_per_layer", "flops")
    assert {k: answers["graph"][k] for k in keys} == {k: answers["chain"][k] for k in keys}
    assert run_cli([str(built / "bundle"), "x", "--engine", "fast"]) == 2
    assert "--engine" in capsys.readouterr().err
