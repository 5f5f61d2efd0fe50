"""Fixtures of the export tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny import tiny_model
from transformers import AutoTokenizer

from mpee_export.model.checkpoint import save_checkpoint


@pytest.fixture
def ckpt(tmp_path, tiny_backbone) -> Path:
    """A saved tiny two-layer SST-2 MPEE checkpoint."""
    path = tmp_path / "ckpt"
    save_checkpoint(tiny_model(layers=2, task="sst2"), AutoTokenizer.from_pretrained(str(tiny_backbone)), path)
    return path
