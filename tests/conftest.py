"""Shared fixtures: tiny random BERTs (seconds per test) and the real GLUE folder when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tiny import tiny_bert_config

GLUE_DIR = Path(os.environ.get("GLUE_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"))


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    if not (GLUE_DIR / "SST-2" / "dev.tsv").is_file():
        pytest.skip(f"real-data test skipped: GLUE data not found at {GLUE_DIR} (set GLUE_DIR)")
    return GLUE_DIR


def write_tiny_backbone(folder: Path) -> Path:
    """Save a tiny random BERT folder with a WordPiece tokenizer into `folder`, usable as --backbone."""
    import torch
    from transformers import BertModel, BertTokenizerFast
    torch.manual_seed(0)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [chr(c) for c in range(97, 123)] + [
        "the", "movie", "good", "bad", "great", "awful", "film", "is", "not", "fun", "boring",
        "##s", "##ing", "##ly", ".", ",", "!", "it", "and", "was", "very", "plot", "acting"]
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    tok = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True)
    BertModel(tiny_bert_config(3, vocab_size=len(words))).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


@pytest.fixture
def tiny_backbone(tmp_path: Path) -> Path:
    """A saved tiny random BERT folder with a WordPiece tokenizer, usable as --backbone (the test's own copy)."""
    return write_tiny_backbone(tmp_path / "backbone")


@pytest.fixture(scope="session")
def shared_backbone(tmp_path_factory) -> Path:
    """The same tiny backbone, once per session: for module-scoped fixtures that only read it."""
    return write_tiny_backbone(tmp_path_factory.mktemp("shared") / "backbone")
