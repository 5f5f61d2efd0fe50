"""Import a benchmarks/ script as a module (the scripts are not a package); tiny data for their tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def write_tiny_sst2(root):
    """A GLUE folder with a tiny SST-2: 16 training and 8 dev sentences."""
    folder = root / "SST-2"
    folder.mkdir(parents=True)
    words = ["a good film", "a bad film", "great acting", "dull and slow", "fine work", "awful plot", "loved it",
             "hated it"]
    for name, n in (("train", 16), ("dev", 8)):
        lines = ["sentence\tlabel"] + [f"{words[i % 8]}\t{1 - i % 2}" for i in range(n)]
        (folder / f"{name}.tsv").write_text("\n".join(lines) + "\n")
    return root
