"""Tiny random BERTs and MPEE models for unit tests (seconds per test)."""

from __future__ import annotations


def tiny_bert_config(layers: int = 3, **kw):
    from transformers import BertConfig
    base = {"vocab_size": 99, "hidden_size": 32, "num_hidden_layers": layers, "num_attention_heads": 4,
            "intermediate_size": 37, "max_position_embeddings": 64, "type_vocab_size": 2}
    return BertConfig(**(base | kw))


def tiny_model(layers: int = 3, seed: int = 0, labels=("0", "1"), positions: int = 64, **mpee_kw):
    """A random MPEE model in eval mode (dropout off), prune layers by the design's defaults unless given;
    `positions` position embeddings (long-input tests use 512)."""
    import torch

    from mpee_export.model.config import MpeeConfig
    from mpee_export.model.modeling import MpeeModel
    torch.manual_seed(seed)
    mpee = MpeeConfig.build(num_layers=layers, labels=list(labels), **mpee_kw)
    model = MpeeModel(tiny_bert_config(layers, max_position_embeddings=positions), mpee)
    # Larger random weights make attention peaky, so rankings are far from ties.
    for p in model.bert.encoder.parameters():
        if p.ndim == 2:
            p.data.normal_(0, 0.2)
    return model.eval()
