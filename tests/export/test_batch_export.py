"""Batches on tiny random models: every row of a padded batch gets exactly its batch-1 answer, in PyTorch
(`MpeeModel.predict_batch`) and in the runtime's batch graphs (`MpeeEngine.predict_batch`), fp32 and int8,
both exit poolings, with and without pruning, rows of very different lengths, pairs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tiny import tiny_model
from transformers import AutoTokenizer

from mpee_export.export.bundle import ExportOptions, export_bundle
from mpee_export.export.optimize import fused_op_counts
from mpee_runtime.bundle.contract import batch_layer_name
from mpee_runtime.bundle.manifest import Manifest
from mpee_runtime.core.engine import MpeeEngine
from mpee_runtime.core.policy import ExitPolicy

WORDS = ["the", "movie", "is", "great", "a", "boring", "film", "it", "was", "bad", "very", "good", "acting", "and",
         "plot", "not", "fun", "awful"]
PROB_TOL = 1e-5


def _rows(n: int = 12, seed: int = 0) -> list[tuple[str, str | None]]:
    """Texts of 1 to 40 words (so 3 to 60 tokens), every third one with a pair of its own length."""
    rng = np.random.default_rng(seed)
    lengths = [1, 40, 3, 25, 2, 12, 33, 6, 1, 18, 9, 28][:n]
    rows = []
    for i, k in enumerate(lengths):
        text = " ".join(rng.choice(WORDS, k))
        pair = " ".join(rng.choice(WORDS, max(1, k // 3))) if i % 3 == 1 else None
        rows.append((text, pair))
    return rows


def _encode(tok, rows):
    """Right-padded (B, T) ids, mask and types, and each row's unpadded (1, T_i) ids and types."""
    encs = [tok(a, b, truncation=True, max_length=60) for a, b in rows]
    width = max(len(e["input_ids"]) for e in encs)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    types = torch.zeros_like(ids)
    mask = torch.zeros_like(ids)
    singles = []
    for j, e in enumerate(encs):
        n = len(e["input_ids"])
        ids[j, :n], types[j, :n], mask[j, :n] = torch.tensor(e["input_ids"]), torch.tensor(e["token_type_ids"]), 1
        singles.append((ids[j:j + 1, :n].clone(), types[j:j + 1, :n].clone()))
    return ids, mask, types, singles


def spread_threshold(max_probs: np.ndarray) -> float:
    """The max_prob threshold at which rows with these per-layer max probabilities (rows, L) leave at the most
    different layers (random models' probabilities sit near 1/C, so no fixed threshold spreads them): a
    midpoint between two observed values, so rounding cannot move an exit."""
    values = np.unique(max_probs)
    candidates = (values[1:] + values[:-1]) / 2

    def layers(t: float) -> int:
        fired = max_probs > t
        return len(set(np.where(fired.any(axis=1), fired.argmax(axis=1), max_probs.shape[1] - 1)))
    return float(max(candidates, key=layers))


def _torch_spread(model, ids, mask, types, ratio) -> float:
    with torch.no_grad():
        memories = model(ids, mask, types, keep_ratio=ratio).memories
    return spread_threshold(memories.softmax(-1).max(-1).values.numpy())


def _same(got, want, tol=PROB_TOL) -> None:
    """A runtime row (Prediction) against a PyTorch row (MpeePrediction) or another runtime row."""
    if hasattr(want, "attn_lens"):
        assert (got.exit_layer, got.label_index, got.tokens_per_layer, got.ffn_tokens_per_layer) == (
            want.exit_layer, want.label, want.attn_lens, want.ffn_lens)
        probs = want.probs
    else:
        assert (got.exit_layer, got.label_index, got.tokens_per_layer, got.ffn_tokens_per_layer) == (
            want.exit_layer, want.label_index, want.tokens_per_layer, want.ffn_tokens_per_layer)
        probs = want.probs
    np.testing.assert_allclose(got.probs, probs, atol=tol, rtol=0)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_pytorch_batch_equals_batch_one(pooling):
    model = tiny_model(layers=4, prune_layers=[0, 1, 2], keep_ratio=0.5, exit_pooling=pooling)
    rng = torch.Generator().manual_seed(0)
    lengths = [40, 3, 17, 9, 2, 25, 60, 5]
    ids = torch.randint(5, 99, (len(lengths), max(lengths)), generator=rng)
    mask = (torch.arange(max(lengths))[None] < torch.tensor(lengths)[:, None]).long()
    ids, types = ids * mask, (torch.arange(max(lengths))[None] >= 4).long() * mask
    singles = [(ids[j:j + 1, :n], types[j:j + 1, :n]) for j, n in enumerate(lengths)]
    for ratio in (None, 1.0, 0.3):
        spread = _torch_spread(model, ids, mask, types, ratio)
        for rule in (ExitPolicy("max_prob", spread, 2), ExitPolicy("patience", 1, 2)):
            batch = model.predict_batch(ids, mask, types, policy=rule, keep_ratio=ratio)
            for (i, ty), got in zip(singles, batch):
                want = model.predict(i, ty, policy=rule, keep_ratio=ratio)
                assert (got.exit_layer, got.label, got.attn_lens, got.ffn_lens) == (
                    want.exit_layer, want.label, want.attn_lens, want.ffn_lens)
                np.testing.assert_allclose(got.probs, want.probs, atol=PROB_TOL, rtol=0)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, shared_backbone):
    """fp32 and int8 bundles of a 4-layer tiny model per exit pooling, and the models."""
    tok = AutoTokenizer.from_pretrained(str(shared_backbone))
    out = {}
    for pooling in ("cls", "mean"):
        model = tiny_model(layers=4, prune_layers=[0, 1, 2], keep_ratio=0.5, exit_pooling=pooling,
                           scoring="mean" if pooling == "mean" else "cls")
        for precision in ("fp32", "int8"):
            folder = tmp_path_factory.mktemp(f"{pooling}_{precision}") / "bundle"
            export_bundle(model, tok, folder, ExportOptions(quantize="int8" if precision == "int8" else None),
                          texts=_rows(), log=lambda m: None)
            out[pooling, precision] = (folder, model)
    return tok, out


@pytest.mark.parametrize("precision", ["fp32", "int8"])
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_runtime_batch_equals_batch_one(bundles, pooling, precision):
    """The acceptance matrix: every row of a batch of very different lengths (with pairs), with and without
    pruning, at exit rules that spread the rows over the layers: its batch-1 answer. fp32 rows are compared
    with PyTorch and with the runtime at batch 1; int8 rows with the int8 runtime at batch 1."""
    tok, made = bundles
    folder, model = made[pooling, precision]
    engine = MpeeEngine(folder, threads=1)
    assert engine.manifest.supports_batches
    rows = _rows()
    texts, pairs = [a for a, _ in rows], [b for _, b in rows]
    ids, mask, types, singles = _encode(tok, rows)
    spread_layers = set()
    for ratio in (None, 1.0, 0.3):
        threshold = _torch_spread(model, ids, mask, types, ratio)
        for policy, t in (("max_prob", threshold), ("patience", 1)):
            got = engine.predict_batch(texts, pairs, threshold=t, keep_ratio=ratio, policy=policy)
            rule = ExitPolicy(policy, t, 2)
            for row, g, (i, ty) in zip(rows, got, singles):
                _same(g, engine.predict(*row, threshold=t, keep_ratio=ratio, policy=policy))
                if precision == "fp32":
                    _same(g, model.predict(i, ty, policy=rule, keep_ratio=ratio))
            if policy == "max_prob":
                spread_layers |= {g.exit_layer for g in got}
    assert len(spread_layers) >= 3, spread_layers   # the rows really left the batch at different layers


def test_batch_graphs_fused_and_recorded(bundles):
    """The batch graphs keep the fused attention (MultiHeadAttention with the rows' key lengths) in fp32 and
    int8, the int8 ones quantize each row on its own, and the manifest and validation record them."""
    _, made = bundles
    for (pooling, precision), (folder, _) in made.items():
        manifest = Manifest.load(folder)
        assert [g.name for g in manifest.batch_graphs] == [batch_layer_name(i) for i in range(4)]
        for g in manifest.batch_graphs:
            counts = fused_op_counts(folder / g.file)
            assert counts.get("MultiHeadAttention") == 1, (g.file, counts)
            assert g.precision == precision
        record = json.loads((folder / "validation.json").read_text())[precision]
        assert record["batch"]["same_exit_layer"] == 1.0 and record["batch"]["same_tokens_per_layer"] == 1.0
        if precision == "int8":
            import onnx
            ops = {n.op_type for n in onnx.load(str(folder / manifest.batch_graphs[0].file)).graph.node}
            assert "QuantizeLinear" in ops and "DynamicQuantizeLinear" not in ops


def test_every_row_leaves_at_a_different_layer(bundles):
    tok, made = bundles
    folder, model = made["cls", "fp32"]
    engine = MpeeEngine(folder, threads=1)
    pool = _rows() + _rows(seed=1) + _rows(seed=2)
    ids, mask, types, _ = _encode(tok, pool)
    with torch.no_grad():
        max_probs = model(ids, mask, types).memories.softmax(-1).max(-1).values.numpy()   # (rows, 4)
    chosen = None
    for t in (np.unique(max_probs)[1:] + np.unique(max_probs)[:-1]) / 2:
        fired = max_probs > t
        exits = np.where(fired.any(axis=1), fired.argmax(axis=1), 3) + 1
        if set(exits) == {1, 2, 3, 4}:
            chosen = float(t), [int(np.flatnonzero(exits == k)[0]) for k in (3, 1, 4, 2)]
            break
    assert chosen is not None, "no threshold spreads the pool over the 4 layers"
    t, picks = chosen
    rows = [pool[j] for j in picks]
    got = engine.predict_batch([a for a, _ in rows], [b for _, b in rows], threshold=t, policy="max_prob")
    assert [g.exit_layer for g in got] == [3, 1, 4, 2]
    for row, g in zip(rows, got):
        _same(g, engine.predict(*row, threshold=t, policy="max_prob"))


def test_bundle_without_batch_graphs_runs_batches_row_by_row(tmp_path, shared_backbone):
    tok = AutoTokenizer.from_pretrained(str(shared_backbone))
    model = tiny_model(layers=2)
    out = tmp_path / "bundle"
    export_bundle(model, tok, out, ExportOptions(batch_graphs=False), texts=_rows(4), log=lambda m: None)
    manifest = Manifest.load(out)
    assert not manifest.supports_batches and not list(out.glob("*.batch.onnx"))
    engine = MpeeEngine(out, threads=1)
    rows = _rows(5)
    got = engine.predict_batch([a for a, _ in rows], [b for _, b in rows])
    for row, g in zip(rows, got):
        _same(g, engine.predict(*row))
