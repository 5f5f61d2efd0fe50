"""Shared fixtures: tiny random BERTs (seconds per test) and the real GLUE folder when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

GLUE_DIR = Path(os.environ.get("GLUE_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"))


def tiny_bert_config(layers: int = 3, **kw):
    from transformers import BertConfig
    base = {"vocab_size": 99, "hidden_size": 32, "num_hidden_layers": layers, "num_attention_heads": 4,
            "intermediate_size": 37, "max_position_embeddings": 64, "type_vocab_size": 2}
    return BertConfig(**(base | kw))


def tiny_model(layers: int = 3, seed: int = 0, labels=("0", "1"), **mpee_kw):
    """A random MPEE model in eval mode (dropout off), prune layers by DESIGN defaults unless given."""
    import torch

    from mpee_export.config import MpeeConfig
    from mpee_export.modeling import MpeeModel
    torch.manual_seed(seed)
    mpee = MpeeConfig.build(num_layers=layers, labels=list(labels), **mpee_kw)
    model = MpeeModel(tiny_bert_config(layers), mpee)
    # Larger random weights make attention peaky, so rankings are far from ties.
    for p in model.bert.encoder.parameters():
        if p.ndim == 2:
            p.data.normal_(0, 0.2)
    return model.eval()


@pytest.fixture
def glue_dir() -> Path:
    if not (GLUE_DIR / "SST-2" / "dev.tsv").is_file():
        pytest.skip(f"GLUE data not found at {GLUE_DIR}")
    return GLUE_DIR


@pytest.fixture
def tiny_backbone(tmp_path: Path) -> Path:
    """A saved tiny random BERT folder with a WordPiece tokenizer, usable as --backbone."""
    import torch
    from transformers import BertModel, BertTokenizerFast
    torch.manual_seed(0)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [chr(c) for c in range(97, 123)] + [
        "the", "movie", "good", "bad", "great", "awful", "film", "is", "not", "fun", "boring",
        "##s", "##ing", "##ly", ".", ",", "!", "it", "and", "was", "very", "plot", "acting"]
    folder = tmp_path / "backbone"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    tok = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True)
    BertModel(tiny_bert_config(3, vocab_size=len(words))).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder
