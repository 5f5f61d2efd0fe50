"""The exporter's house rules, read from the source: no import circle between modules, the dependency
direction between its stage subpackages (model <- data <- training; model/data <- export; the command line on top), and
nothing but the command line importing mpee_export.cli."""

from __future__ import annotations

from pathlib import Path

from import_graph import ImportGraph

import mpee_export

ROOT = Path(mpee_export.__file__).parent
# What each subpackage must not import (the neutral module errors.py is open to all; the package root only
# defines __version__ and the lazy public names).
FORBIDDEN = {"model": {"data", "training", "export", "baselines", "cli"},
             "data": {"training", "export", "baselines", "cli"},
             "training": {"export", "baselines", "cli"},
             "export": {"baselines", "cli"},
             "baselines": {"training", "cli"}}
SUBPACKAGES = {"model", "data", "training", "export", "baselines", "cli"}


GRAPH = ImportGraph(ROOT)
MODULES = GRAPH.modules


def subpackage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in SUBPACKAGES) else None


def test_the_stages_are_subpackages():
    flat = sorted(m for m in MODULES if m.count(".") == 1 and subpackage(m) is None)
    assert flat == ["mpee_export.errors", "mpee_export.version"], flat
    assert {subpackage(m) for m in MODULES} - {None} == SUBPACKAGES


def test_subpackages_import_only_what_they_may():
    bad = [f"{m} imports {d}" for m, deps in GRAPH.edges.items() for d in deps
           if subpackage(d) in FORBIDDEN.get(subpackage(m), ())]
    assert not bad, bad


def test_nothing_outside_the_command_line_imports_it():
    bad = [f"{m} imports {i}" for m, p in MODULES.items() if subpackage(m) != "cli"
           for i in GRAPH.imports(m) if i == "mpee_export.cli" or i.startswith("mpee_export.cli.")]
    assert not bad, bad


def test_the_model_imports_no_later_stage():
    later = ("mpee_export.export", "mpee_export.training", "mpee_export.baselines", "mpee_export.cli")
    bad = [f"{m} imports {i}" for m, p in MODULES.items() if subpackage(m) == "model"
           for i in GRAPH.imports(m) if i.startswith(later)]
    assert not bad, bad


def test_no_private_name_is_imported_across_modules():
    bad = GRAPH.private_imports("mpee")
    assert not bad, bad


def test_no_import_circle():
    circles = GRAPH.circles()
    assert not circles, circles


def test_public_api_is_lazy_and_complete():
    """Every public name resolves to its one home; `import mpee_export` alone imports no submodule but the version
    (nor torch)."""
    import subprocess
    import sys
    for name in mpee_export.__all__:
        assert getattr(mpee_export, name) is not None
    code = ("import sys, mpee_export; print(sorted(m for m in sys.modules "
            "if m.startswith('mpee_export.') and m != 'mpee_export.version' or m == 'torch'))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]", loaded
