"""Long inputs: export parity at 500 tokens with pruning, and the truncation rule (head, head+tail) applied
identically by PyTorch (mpee_export.data.batching) and by the runtime (mpee_runtime.truncation, the engine)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from tiny import tiny_model
from transformers import AutoTokenizer

from mpee_export.data.batching import tokenize
from mpee_export.export.bundle import ExportOptions, export_bundle
from mpee_runtime.bundle import manifest as S
from mpee_runtime.core.engine import MpeeEngine
from mpee_runtime.core.policy import ExitPolicy
from mpee_runtime.text import truncation as T
from mpee_runtime.text.readers import cut_text

WORDS = ["the", "movie", "good", "bad", "great", "awful", "film", "is", "not", "fun", "boring", "it", "and",
         "was", "very", "plot", "acting", ".", ",", "!"]


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


@pytest.fixture(scope="module")
def long_bundle(tmp_path_factory, shared_backbone):
    """A tiny 3-layer model reading 512 tokens head+tail, pruning at layers 0 and 1, exported."""
    tok = AutoTokenizer.from_pretrained(str(shared_backbone))
    model = tiny_model(layers=3, positions=512, max_length=512, truncation="head+tail", prune_layers=[0, 1],
                       keep_ratio=0.5, exit_pooling="mean", scoring="mean")
    # Distinct positions: with a 20-word vocabulary, repeated words would otherwise score nearly alike, and
    # near-tied pruning steps are left out of the graph check (validate._near_tie).
    model.bert.embeddings.position_embeddings.weight.data.normal_(0, 0.5)
    rng = random.Random(0)
    texts = [(_text(rng, n), None) for n in (495, 498, 700, 40)] + [(_text(rng, 300), _text(rng, 400))]
    out = tmp_path_factory.mktemp("long") / "bundle"
    export_bundle(model, tok, out, ExportOptions(), texts=texts, log=lambda m: None)
    return out, model, tok, texts


def test_parity_at_500_tokens_with_pruning(long_bundle):
    out, model, tok, texts = long_bundle
    record = json.loads((out / "validation.json").read_text())["fp32"]
    assert record["passed"] and record["graphs"]["max_abs_diff_overall"] < 1e-4
    # near-tied pruning steps are left out of the graph check; every pruning graph still compared real states
    assert all(n < len(texts) for n in record["graphs"]["ties"].values())
    assert S.Manifest.load(out).model.truncation == "head+tail"
    engine = MpeeEngine(out, threads=1)
    for a, b in texts:
        ids, types = tokenize(tok, [a], None if b is None else [b], 512, "head+tail")
        ids_t, types_t = (np.asarray(x, dtype=np.int64) for x in (ids, types))
        got_ids, got_types = engine.encode(a, b)
        np.testing.assert_array_equal(got_ids, ids_t)
        np.testing.assert_array_equal(got_types, types_t)
        import torch
        for ratio in (None, 0.3, 1.0):
            for threshold in (0.0, 0.6):
                ref = model.predict(torch.from_numpy(ids_t), torch.from_numpy(types_t),
                                    policy=ExitPolicy("entropy", threshold, 2), keep_ratio=ratio)
                got = engine.predict(a, b, threshold=threshold, keep_ratio=ratio, policy="entropy")
                assert got.exit_layer == ref.exit_layer and got.label_index == ref.label
                assert got.tokens_per_layer == ref.attn_lens and got.ffn_tokens_per_layer == ref.ffn_lens
                np.testing.assert_allclose(got.probs, ref.probs, atol=1e-5)
        if ids_t.shape[1] > 400:   # pruning really ran on a long sequence
            assert engine.predict(a, b, threshold=0.0, keep_ratio=0.3).tokens_per_layer[-1] < 0.2 * ids_t.shape[1]


def test_head_tail_same_in_pytorch_and_runtime(long_bundle):
    """Texts shorter and longer than the limit, pairs with one long side, two long sides, two short sides."""
    out, _, tok, _ = long_bundle
    engine = MpeeEngine(out, threads=1)
    rng = random.Random(1)
    cases = [(_text(rng, n), None) for n in (1, 10, 509, 510, 511, 900)]
    cases += [(_text(rng, na), _text(rng, nb)) for na, nb in [(5, 7), (5, 900), (900, 5), (300, 300), (254, 600),
                                                              (600, 255), (3, 505)]]
    for a, b in cases:
        ids, types = tokenize(tok, [a], None if b is None else [b], 512, "head+tail")
        got_ids, got_types = engine.encode(a, b)
        assert got_ids[0].tolist() == ids[0] and got_types[0].tolist() == types[0], (len(a), b and len(b))
        whole = tok(a, b)["input_ids"]
        if len(whole) <= 512:   # within the limit: untouched, as head truncation would give
            assert ids[0] == whole
        assert len(ids[0]) == min(512, len(whole))


def test_head_tail_keeps_the_first_quarter_and_the_last_tokens(shared_backbone):
    tok = AutoTokenizer.from_pretrained(str(shared_backbone))
    words = [w for w in WORDS if w not in ".,!"]
    text = " ".join(words[i % len(words)] for i in range(100))
    piece = tok(text, add_special_tokens=False)["input_ids"]
    ids, types = tokenize(tok, [text], None, 22, "head+tail")   # budget 20: 5 from the head, 15 from the tail
    assert ids[0] == [tok.cls_token_id] + piece[:5] + piece[-15:] + [tok.sep_token_id]
    head, _ = tokenize(tok, [text], None, 22, "head")
    assert head[0] == [tok.cls_token_id] + piece[:20] + [tok.sep_token_id]
    # a pair is shared out longest-first (as head truncation shares it), then each side keeps head and tail
    pair = " ".join(words[:6])
    ids, types = tokenize(tok, [text], [pair], 22, "head+tail")
    p = tok(pair, add_special_tokens=False)["input_ids"]
    keep = 22 - 3 - len(p)
    h = T.head_tokens(keep)
    assert ids[0] == [tok.cls_token_id] + piece[:h] + piece[-(keep - h):] + [tok.sep_token_id] + p + [tok.sep_token_id]
    assert types[0] == [0] * (keep + 2) + [1] * (len(p) + 1)
    assert T.pair_budgets(30, 5, 20) == (15, 5) and T.pair_budgets(30, 30, 21) == (10, 11)
    assert T.pair_budgets(30, 30, 21, a_longer=True) == (11, 10) and T.pair_budgets(3, 4, 20) == (3, 4)


def test_head_tail_character_cut_keeps_the_tokens(long_bundle):
    """A text over the engine's character limit keeps its head and its tail (data.cut_text(tail=True)): the
    token ids are those of the whole text, and cutting again changes nothing."""
    out, _, tok, _ = long_bundle
    engine = MpeeEngine(out, threads=1)
    rng = random.Random(2)
    text = _text(rng, 12000)
    assert len(text) > engine.max_chars
    cut, was_cut = cut_text(text, engine.max_chars, tail=True)
    assert was_cut and len(cut) <= engine.max_chars and cut_text(cut, engine.max_chars, tail=True) == (cut, False)
    ids, _ = tokenize(tok, [text], None, 512, "head+tail")
    got, _, flagged = engine.encode_cut(text)
    assert flagged and got[0].tolist() == ids[0]
