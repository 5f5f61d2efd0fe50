"""The runtime's house rules (docs/design.md "Layout and ownership"), read from the source: which subpackage may
import which, no import circle between modules, and nothing of torch, transformers or the exporter."""

from __future__ import annotations

from pathlib import Path

from import_graph import ImportGraph

import mpee_runtime

ROOT = Path(mpee_runtime.__file__).parent
# What each subpackage must not import (the neutral modules errors.py and files.py are open to all).
FORBIDDEN = {"bundle": {"bench", "serve", "cli", "text"}, "core": {"bench", "serve", "cli"},
             "text": {"bench", "serve", "cli", "core"}, "serve": {"bench"}, "cli": {"bench", "serve"}}
FOREIGN = ("torch", "transformers", "mpee_export", "optimum")


GRAPH = ImportGraph(ROOT)


def test_subpackages_import_only_what_they_may():
    bad = []
    for m, deps in GRAPH.edges.items():
        here = m.split(".")[1] if m.count(".") else None
        for d in deps:
            there = d.split(".")[1] if d.count(".") else None
            if there in FORBIDDEN.get(here, ()):
                bad.append(f"{m} imports {d}")
    assert not bad, bad


def test_no_module_imports_torch_transformers_or_the_exporter():
    bad = [f"{m} imports {i}" for m in GRAPH.modules for i in GRAPH.imports(m) if i.split(".")[0] in FOREIGN]
    assert not bad, bad


def test_no_import_circle():
    circles = GRAPH.circles()
    assert not circles, circles


def test_no_private_name_is_imported_across_modules():
    bad = GRAPH.private_imports("mpee")
    assert not bad, bad


def test_bundle_reads_only_the_two_leaf_modules_of_core():
    """The contract checks a manifest's exit rule and builds its FLOPs model: core.policy and core.flops, which
    import nothing of the package but errors, so the contract never reaches the engine."""
    leaves = {"mpee_runtime.core.policy", "mpee_runtime.core.flops"}
    used = {d for m, deps in GRAPH.edges.items() if m.startswith("mpee_runtime.bundle") for d in deps
            if d.startswith("mpee_runtime.core")}
    assert used <= leaves, used
    for leaf in leaves:
        assert GRAPH.edges[leaf] <= {"mpee_runtime.errors"}, GRAPH.edges[leaf]
