"""The MPEE model against transformers, against itself alone vs batched, and against docs/design.md 2.1-2.4."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import tiny_bert_config, tiny_model
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertModel

from mpee_export.errors import MpeeExportError
from mpee_export.model.config import MpeeConfig, default_prune_layers
from mpee_export.model.modeling import LayerState, keep_count, memories_to_probs, prune_tokens
from mpee_runtime.core.policy import ExitPolicy, first_exit_layers

LENGTHS = [23, 7, 16, 3, 30, 11]


def random_batch(lengths, vocab=99, seed=1, pairs=False):
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    types = torch.zeros_like(ids)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(5, vocab, (n,), generator=g)
        ids[i, 0] = 2
        mask[i, :n] = 1
        if pairs:
            types[i, n // 2:n] = 1
    return ids, mask, types


def test_layers_match_transformers_without_pruning():
    model = tiny_model(layers=3, prune_layers=[])
    ref = BertModel(model.config, add_pooling_layer=False)
    ref.load_state_dict(model.bert.state_dict())
    ref.eval()
    ids, mask, types = random_batch(LENGTHS, pairs=True)
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        state = model.embed(ids, mask, types)
        for i in range(3):
            state, _ = model.layer_step(i, state)
    real = mask.bool()
    assert torch.allclose(state.hidden[real], expected[real], atol=1e-5)


@pytest.mark.parametrize("layers,kw", [
    (3, {}),
    (4, {"prune_layers": [0, 1, 2], "keep_ratio": 0.5}),
    (4, {"prune_layers": [0, 2], "keep_ratio": [0.3, 0.8], "scoring": "all"}),
    (3, {"prune_layers": [0, 1], "keep_ratio": 0.5, "fuse_token": False}),
    (3, {"prune_layers": [0, 1], "keep_ratio": 0.6, "prune_select": "bottom", "beta_schedule": "research"}),
    (4, {"prune_layers": [0, 1, 2], "keep_ratio": 0.5, "exit_pooling": "mean", "scoring": "mean"}),
    (3, {"prune_layers": [0, 1], "keep_ratio": 0.5, "fuse_token": False, "exit_pooling": "mean"}),
])
@pytest.mark.parametrize("pairs", [False, True])
def test_batched_equals_alone(layers, kw, pairs):
    model = tiny_model(layers=layers, **kw)
    ids, mask, types = random_batch(LENGTHS, pairs=pairs)
    labels = torch.tensor([0, 1, 1, 0, 1, 0])
    with torch.no_grad():
        batch = model(ids, mask, types)
        batch_loss = model.loss(batch, labels)
        alone_losses = []
        for i, n in enumerate(LENGTHS):
            one = model(ids[i:i + 1, :n], mask[i:i + 1, :n], types[i:i + 1, :n])
            torch.testing.assert_close(one.memories, batch.memories[i:i + 1], atol=2e-5, rtol=1e-4)
            assert one.attn_lens.tolist() == batch.attn_lens[i:i + 1].tolist()
            assert one.ffn_lens.tolist() == batch.ffn_lens[i:i + 1].tolist()
            alone_losses.append(model.loss(one, labels[i:i + 1]))
    # every loss term is a batch mean, so the batch loss is the mean of the per-sample losses
    torch.testing.assert_close(batch_loss, torch.stack(alone_losses).mean(), atol=1e-5, rtol=1e-5)
    if kw.get("prune_layers", [1]):
        assert (batch.ffn_lens < batch.attn_lens).any(), "the schedule should prune something"


@pytest.mark.parametrize("padded", [False, True])
def test_side_scores_match_the_attention_probabilities(padded):
    """The scores computed on the side from queries and keys equal the attention probabilities of the
    unfused layer (transformers' eager attention): the [CLS] row for "cls", every real row for "all", and
    the softmax of the mean query for "mean"; fp32 tolerance."""
    from mpee_export.model.modeling import attention_block
    model = tiny_model(layers=2)
    layer = model.bert.encoder.layer[0]
    parts = model.family.attention_parts(layer)
    lengths = [9, 5] if padded else [9]
    ids, mask, types = random_batch(lengths)
    with torch.no_grad():
        hidden = model.bert.embeddings(input_ids=ids, token_type_ids=types)
        ref = BertModel._from_config(model.config, add_pooling_layer=False, attn_implementation="eager").eval()
        ref.load_state_dict(model.bert.state_dict())
        probs = ref(input_ids=ids, attention_mask=mask, token_type_ids=types,
                    output_attentions=True).attentions[0]                              # (B, H, N, N)
        m = mask.float() if padded else None
        _, cls = attention_block(parts, hidden, m, "cls")
        _, every = attention_block(parts, hidden, m, "all")
        _, mean = attention_block(parts, hidden, m, "mean")
        sa = layer.attention.self
        for i, n in enumerate(lengths):
            torch.testing.assert_close(cls[i, :n - 1], probs[i, :, 0, 1:n].mean(0), atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(every[i, :n - 1], probs[i, :, :n, 1:n].mean((0, 1)), atol=1e-6, rtol=1e-5)
            h = hidden[i, :n]
            q = sa.query(h.mean(0)).view(4, 8)                    # the query of the mean-pooled input
            kk = sa.key(h).view(n, 4, 8).transpose(0, 1)          # (H, n, dh)
            want = ((kk @ q[:, :, None])[..., 0] / 8 ** 0.5).softmax(-1)[:, 1:].mean(0)
            torch.testing.assert_close(mean[i, :n - 1], want, atol=1e-6, rtol=1e-5)
            if padded:
                assert (cls[i, n - 1:] == 0).all() and (mean[i, n - 1:] == 0).all()   # padding gets nothing


def test_keep_count_rule():
    n = torch.tensor([11, 11, 2, 3, 101])
    # ceil(0.7 * 10) is 7, although 0.7 * 10 = 7.000000000000001 in float64
    assert keep_count(n, 0.7).tolist() == [7, 7, 1, 2, 70]
    assert keep_count(torch.tensor([11, 5]), 0.01).tolist() == [1, 1]       # k >= 1
    assert keep_count(torch.tensor([11, 5]), 1.0).tolist() == [10, 4]      # nothing pruned


def test_prune_tokens_by_hand():
    d = 3
    hidden = torch.arange(6 * d, dtype=torch.float32).view(1, 6, d)   # [CLS] + 5 tokens
    scores = torch.tensor([[0.1, 0.4, 0.05, 0.3, 0.15]])               # memories of positions 1..5
    state = LayerState(hidden, torch.ones(1, 6), scores)
    out = prune_tokens(state, 0.6)                                      # k = ceil(0.6 * 5) = 3
    # kept: positions 2, 4, 5 (scores 0.4, 0.3, 0.15) in descending order, then the fused token
    assert torch.equal(out.hidden[0, :4], hidden[0, [0, 2, 4, 5]])
    fused = 0.1 * hidden[0, 1] + 0.05 * hidden[0, 3]
    torch.testing.assert_close(out.hidden[0, 4], fused)
    # score memory is gathered by kept index; the fused token gets the mean of the dropped memories
    torch.testing.assert_close(out.scores[0], torch.tensor([0.4, 0.3, 0.15, 0.075]))
    assert out.mask.tolist() == [[1, 1, 1, 1, 1]]
    dropped = prune_tokens(state, 0.6, fuse=False)
    assert dropped.hidden.shape[1] == 4
    bottom = prune_tokens(state, 0.6, select="bottom")
    assert torch.equal(bottom.hidden[0, 1:4], hidden[0, [3, 1, 5]])     # lowest scores first


def test_prune_tokens_nothing_to_drop():
    state = LayerState(torch.randn(1, 3, 4), torch.ones(1, 3), torch.tensor([[0.2, 0.7]]))
    out = prune_tokens(state, 0.7)                                      # k = ceil(1.4) = 2 = N - 1
    assert out.hidden.shape[1] == 3                                     # no fused token appended


def test_mean_pooled_exit_by_hand():
    """Mean pooling averages the real tokens with weight 1 each ([CLS], kept and fused tokens), never padding."""
    model = tiny_model(layers=3, prune_layers=[0], keep_ratio=0.5, exit_pooling="mean")
    head = model.exits[0]
    hidden = torch.randn(2, 5, 32)
    mask = torch.tensor([[1.0, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    want = torch.stack([hidden[0].mean(0), hidden[1, :3].mean(0)])
    torch.testing.assert_close(head.pool(hidden, mask), want)
    torch.testing.assert_close(head.pool(hidden[1:, :3], None), want[1:])         # unpadded path
    cls_head = tiny_model(layers=3).exits[0]
    torch.testing.assert_close(cls_head.pool(hidden, mask), hidden[:, 0])
    ids, mask_ids, types = random_batch(LENGTHS)
    with torch.no_grad():                                # the pooling changes the prediction
        other = tiny_model(layers=3, prune_layers=[0], keep_ratio=0.5, exit_pooling="cls")
        other.load_state_dict(model.state_dict())
        assert not torch.allclose(model(ids, mask_ids, types).memories, other(ids, mask_ids, types).memories)


def test_classifier_memory_recurrence():
    raw = tiny_model(layers=3, lam=1.0)                                 # memories are the exit logits
    blended = tiny_model(layers=3, lam=0.9)
    blended.load_state_dict(raw.state_dict())
    ids, mask, types = random_batch(LENGTHS)
    with torch.no_grad():
        z = raw(ids, mask, types).memories
        m = blended(ids, mask, types).memories
    torch.testing.assert_close(m[:, 0], z[:, 0])
    for layer in range(1, 3):
        torch.testing.assert_close(m[:, layer], 0.1 * m[:, layer - 1] + 0.9 * z[:, layer])


def test_predict_stops_where_the_traces_say():
    model = tiny_model(layers=4, prune_layers=[1, 2], keep_ratio=0.5)
    ids, mask, types = random_batch(LENGTHS)
    with torch.no_grad():
        out = model(ids, mask, types)
    probs, ent = memories_to_probs(out.memories)
    for threshold in (0.0, 0.6, 0.69, 10.0):
        expected = first_exit_layers(probs, ent, "entropy", threshold)
        policy = ExitPolicy("entropy", threshold, 2)
        for i, n in enumerate(LENGTHS):
            pred = model.predict(ids[i:i + 1, :n], types[i:i + 1, :n], policy=policy)
            assert pred.exit_layer == expected[i]
            np.testing.assert_allclose(pred.probs, probs[i, pred.exit_layer - 1], atol=1e-5)
            assert pred.attn_lens == out.attn_lens[i, :pred.exit_layer].tolist()
    assert expected.tolist() == [1] * len(LENGTHS)          # threshold 10 > log 2 stops at layer 1


def test_flops_formula_matches_flop_counter():
    """docs/design.md 2.4 against torch's FlopCounterMode on the eager model; tolerance: exact (0 FLOPs)."""
    model = tiny_model(layers=4, prune_layers=[0, 2], keep_ratio=0.5)
    ids, mask, types = random_batch([29])
    with torch.no_grad():
        model(ids, mask, types)  # warm-up outside the counter
        with FlopCounterMode(display=False) as counter:
            out = model(ids, mask, types)
    attn, ffn = out.attn_lens[0].tolist(), out.ffn_lens[0].tolist()
    assert ffn[0] < attn[0], "the check must include a pruning layer"
    assert counter.get_total_flops() == model.flops_model.executed_flops(attn, ffn)


def test_default_prune_layers():
    assert default_prune_layers(12) == [3, 6, 9]
    assert default_prune_layers(6) == [2, 3, 4]
    assert default_prune_layers(3) == [1]
    cfg = MpeeConfig.build(num_layers=12, labels=["0", "1"], beta_schedule="research")
    assert cfg.betas == [1.0] * 4 + [0.5] * 8 and cfg.keep_ratios == [0.7] * 3


@pytest.mark.parametrize("kw", [{"keep_ratio": 0.0}, {"keep_ratio": 1.2}, {"prune_layers": [7]},
                                {"scoring": "max"}, {"lam": 0.0}, {"exit_pooling": "max"}])
def test_bad_config_rejected(kw):
    with pytest.raises(MpeeExportError):
        MpeeConfig.build(num_layers=3, labels=["0", "1"], **kw)


def test_ablation_switches_change_the_computation():
    ids, mask, types = random_batch(LENGTHS)
    labels = torch.tensor([0, 1, 1, 0, 1, 0])
    with torch.no_grad():
        no_prune = tiny_model(layers=3, prune_layers=[])(ids, mask, types)
        assert torch.equal(no_prune.attn_lens, no_prune.ffn_lens)
        no_exit = tiny_model(layers=3, layer_exit=False)
        out = no_exit(ids, mask, types)
        assert no_exit.loss(out, labels) == torch.nn.functional.cross_entropy(out.memories[:, -1], labels)
        full = tiny_model(layers=3)
        plain = tiny_model(layers=3, self_distill=False)
        o = full(ids, mask, types)
        assert plain.loss(o, labels) < full.loss(o, labels)   # KD and teacher terms are positive


def test_model_rejects_mismatched_config():
    with pytest.raises(ValueError):
        from mpee_export.model.modeling import MpeeModel
        MpeeModel(tiny_bert_config(3), MpeeConfig.build(num_layers=4, labels=["0", "1"]))


def test_no_score_after_the_last_pruning_layer_changes_no_prediction(monkeypatch):
    """Layers after the last pruning layer skip the token score and carry the memory through; computing it
    anyway (the research code's way) gives the same memories, token counts and batch-1 predictions."""
    model = tiny_model(layers=4, prune_layers=[1], keep_ratio=0.5)
    assert [model.scores_needed(i) for i in range(4)] == [True, True, False, False]
    ids, mask, types = random_batch(LENGTHS)
    policy = ExitPolicy("entropy", 0.0, 2)
    with torch.no_grad():
        out = model(ids, mask, types)
        preds = [model.predict(ids[i:i + 1, :n], types[i:i + 1, :n], policy=policy) for i, n in enumerate(LENGTHS)]
        monkeypatch.setattr(type(model), "scores_needed", lambda self, layer: True)
        ref = model(ids, mask, types)
        ref_preds = [model.predict(ids[i:i + 1, :n], types[i:i + 1, :n], policy=policy)
                     for i, n in enumerate(LENGTHS)]
    torch.testing.assert_close(out.memories, ref.memories, rtol=0, atol=0)
    assert torch.equal(out.ffn_lens, ref.ffn_lens)
    for p, r in zip(preds, ref_preds):
        np.testing.assert_array_equal(p.probs, r.probs)
        assert (p.exit_layer, p.attn_lens, p.ffn_lens) == (r.exit_layer, r.attn_lens, r.ffn_lens)
