"""Bundle identity and role in every graph: stamps written at export, and the re-hashed substitutions the
runtime refuses (another bundle's layer, an int8 graph in an fp32 bundle, a tokenizer with shuffled
vocabulary ids), with every sha256 and the manifest's integrity record re-computed around them."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import onnx
import pytest
from tiny import tiny_model
from transformers import AutoTokenizer

from mpee_export.export.bundle import ExportOptions, bundle_id, export_bundle, weights_sha256
from mpee_runtime.bundle.contract import MANIFEST, PRECISION_KEY, TOKENIZER, TOKENIZER_KEY, layer_file
from mpee_runtime.bundle.integrity import seal, sha256_of
from mpee_runtime.bundle.manifest import Manifest
from mpee_runtime.cli.run import main as run_cli
from mpee_runtime.core.engine import MpeeEngine
from mpee_runtime.errors import MpeeRuntimeError

TEXTS = [("the movie is great", None), ("a boring film", "it was bad"), ("very good acting and plot", None)]
MODEL = {"layers": 3, "prune_layers": [1]}


@pytest.fixture(scope="module")
def bundles(shared_backbone, tmp_path_factory) -> dict[str, Path]:
    """Three bundles: `a` (seed 0, fp32), `b` (seed 1, fp32), `a_int8` (seed 0, int8)."""
    tok = AutoTokenizer.from_pretrained(str(shared_backbone))
    root = tmp_path_factory.mktemp("integrity")
    out = {}
    for name, seed, opts in (("a", 0, ExportOptions()), ("b", 1, ExportOptions()),
                             ("a_int8", 0, ExportOptions(quantize="int8"))):
        out[name] = root / name
        export_bundle(tiny_model(seed=seed, **MODEL), tok, out[name], opts, texts=TEXTS, log=lambda m: None)
    return out


@pytest.fixture
def a(bundles, tmp_path) -> Path:
    """A private copy of bundle `a` to tamper with."""
    return Path(shutil.copytree(bundles["a"], tmp_path / "a"))


def _props(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def _rehash_and_seal(bundle: Path, edit=None) -> None:
    """Re-compute every file's sha256 and the integrity record, as a deliberate replacer would."""
    manifest = json.loads((bundle / MANIFEST).read_text())
    if edit:
        edit(manifest)
    manifest["tokenizer"]["sha256"] = sha256_of(bundle / manifest["tokenizer"]["file"])
    for g in manifest["graphs"]:
        g["sha256"] = sha256_of(bundle / g["file"])
    (bundle / MANIFEST).write_text(json.dumps(seal(manifest)))


def _refused(bundle: Path, capsys, needle: str) -> str:
    with pytest.raises(MpeeRuntimeError) as e:
        MpeeEngine(bundle, threads=1, warmup=0)
    message = str(e.value)
    assert needle in message and "\n" not in message, message
    assert run_cli([str(bundle), "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and err.count("\n") == 1, err
    return message


def test_every_graph_is_stamped(bundles):
    for name in ("a", "a_int8"):
        manifest = Manifest.load(bundles[name])
        assert len(manifest.export.bundle_id) == 64
        for g in manifest.graphs:
            stamp = _props(bundles[name] / g.file)
            assert {k: stamp.get(k) for k in manifest.graph_stamp(g)} == manifest.graph_stamp(g)
            assert stamp[PRECISION_KEY] == ("int8" if name == "a_int8" else "fp32")   # re-stamped after quantizing
            assert stamp[TOKENIZER_KEY] == manifest.tokenizer.sha256
    ids = {n: Manifest.load(p).export.bundle_id for n, p in bundles.items()}
    assert len(set(ids.values())) == 3


def test_bundle_id_rule():
    """Same weights, config and graph-shaping options: same id; any of them different: another id."""
    m0, m0_again, m1 = tiny_model(seed=0, **MODEL), tiny_model(seed=0, **MODEL), tiny_model(seed=1, **MODEL)
    assert weights_sha256(m0) == weights_sha256(m0_again) != weights_sha256(m1)
    base = bundle_id(m0, ExportOptions())
    assert base == bundle_id(m0_again, ExportOptions(force=True, keep_failed=True))   # not graph-shaping
    others = [bundle_id(m1, ExportOptions()), bundle_id(m0, ExportOptions(quantize="int8")),
              bundle_id(m0, ExportOptions(graph_ops="standard")), bundle_id(m0, ExportOptions(opset=18)),
              bundle_id(tiny_model(seed=0, layers=3, prune_layers=[0]), ExportOptions())]
    assert base not in others and len(set(others)) == len(others)


def test_untouched_bundle_runs(a, capsys):
    assert MpeeEngine(a, threads=1).predict("the movie is great").exit_layer >= 1
    _rehash_and_seal(a)                                    # re-computing unchanged digests changes nothing
    assert run_cli([str(a), "the movie is great"]) == 0


def test_another_bundles_layer(a, bundles, capsys):
    shutil.copyfile(bundles["b"] / layer_file(1), a / layer_file(1))
    _rehash_and_seal(a)
    message = _refused(a, capsys, "a graph of another bundle")
    assert message.startswith(str(a / layer_file(1)))


def test_all_graphs_of_another_bundle(a, bundles, capsys):
    for g in Manifest.load(a).graphs:
        shutil.copyfile(bundles["b"] / g.file, a / g.file)
    _rehash_and_seal(a)
    _refused(a, capsys, "a graph of another bundle")


def test_int8_graph_in_an_fp32_bundle(a, bundles, capsys):
    shutil.copyfile(bundles["a_int8"] / layer_file(1), a / layer_file(1))
    _rehash_and_seal(a)
    _refused(a, capsys, "a 'int8' graph, the manifest says 'fp32'")
    # the manifest made to say int8 for it too: the graph is still another bundle's
    _rehash_and_seal(a, lambda m: m["graphs"][2].update(precision="int8"))
    _refused(a, capsys, "a graph of another bundle")


def test_tokenizer_with_shuffled_vocabulary(a, capsys):
    data = json.loads((a / TOKENIZER).read_text())
    vocab = data["model"]["vocab"]
    ids = list(vocab.values())
    random.Random(0).shuffle(ids)
    data["model"]["vocab"] = dict(zip(vocab, ids))
    assert data["model"]["vocab"] != vocab
    (a / TOKENIZER).write_text(json.dumps(data))
    _rehash_and_seal(a)
    _refused(a, capsys, "tokenizer.json replaced")
