"""Runtime tests run without torch: the bundle comes from MPEE_TEST_BUNDLE, or is built here if torch exists."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> Path:
    """Folder with bundle/ and expected.json (PyTorch's predictions)."""
    given = os.environ.get("MPEE_TEST_BUNDLE")
    if given:
        return Path(given)
    pytest.importorskip("torch")
    from make_bundle import make_tiny_bundle
    folder = tmp_path_factory.mktemp("tiny")
    make_tiny_bundle(folder)
    return folder


@pytest.fixture
def bundle(built, tmp_path) -> Path:
    """A private copy of the tiny bundle (tests may tamper with it)."""
    return Path(shutil.copytree(built / "bundle", tmp_path / "bundle"))


@pytest.fixture(scope="session")
def expected(built) -> list[dict]:
    return json.loads((built / "expected.json").read_text())
