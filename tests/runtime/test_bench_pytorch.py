"""The PyTorch pass of mpee-bench (mpee_export.bench_pytorch): its rows join the measurement and the report
puts the `pytorch` row first in the table. Needs torch: skipped in the torch-free runtime venv."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner
from make_bundle import WORDS

from mpee_runtime.bench.cli import main as bench_main
from mpee_runtime.bench.records import PYTORCH_ROWS, PYTORCH_RUN, ROWS, RUN, RunRecord, read_rows
from mpee_runtime.bundle.reference import REFERENCE_HF, ReferenceRecord

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")


def _reference(folder, pooling="cls"):
    """A reference folder with what the PyTorch pass reads: hf/ (a tiny BERT classifier with the bundle's
    vocabulary and tokenizer settings) and reference.json."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast
    (folder / REFERENCE_HF).mkdir(parents=True)
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    tok = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True, model_max_length=24)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=64, num_labels=2)
    BertForSequenceClassification(config).save_pretrained(str(folder / REFERENCE_HF))
    tok.save_pretrained(str(folder / REFERENCE_HF))
    ReferenceRecord(exit_pooling=pooling, opset=17, fusion={}, quantization={}, files={}, warnings=[],
                    environment={}).dump(folder)
    return folder


def _data(path, n=7):
    rows = [("the movie is great", "entailment"), ("a boring film", "not_entailment"),
            ("very good acting and plot", "entailment"), ("awful plot , not fun", "not_entailment")] * 2
    path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows[:n]))
    return path


def test_pytorch_pass_rows_join_the_report(built, tmp_path, capsys):
    from mpee_export.baselines.bench_pytorch import main as pytorch_main
    ref, data, out = _reference(tmp_path / "ref"), _data(tmp_path / "dev.jsonl"), tmp_path / "bench"
    assert bench_main([str(built / "bundle"), "--input", str(data), "--out", str(out), "--threads", "1",
                       "--warmup", "1", "--no-sweep", "--no-static"]) == 0
    before = json.loads((out / "results.json").read_text())
    assert "pytorch" not in [v["variant"] for v in before["variants"]]
    res = CliRunner().invoke(pytorch_main, [str(ref), "--input", str(data), "--threads", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert f"wrote {out / PYTORCH_ROWS}" in res.output
    rows = read_rows(out / PYTORCH_ROWS)
    assert sorted(r.example for r in rows) == list(range(7)) and {r.variant for r in rows} == {"pytorch"}
    measured = {r.example: r for r in read_rows(out / ROWS) if r.variant == "chain"}
    for r in rows:                             # the same examples and token ids as the onnxruntime pass
        assert r.input_tokens == measured[r.example].input_tokens and r.tokens_per_layer == [r.input_tokens] * 3
        assert r.exit_layer == 3 and r.flops > 0 and r.time_us > 0
    pt = RunRecord.load(out / PYTORCH_RUN)
    run = RunRecord.load(out / RUN)
    assert pt.run_id == run.run_id and pt.passes[0]["mode"] == "alone" and pt.passes[0]["warmup"] == 1
    assert pt.environment["torch_threads"] == 1 and "cpu_before" in pt.environment

    capsys.readouterr()
    assert bench_main(["report", str(out)]) == 0
    assert "| pytorch: PyTorch eager full model" in capsys.readouterr().out
    result = json.loads((out / "results.json").read_text())
    names = [v["variant"] for v in result["variants"]]
    assert names == ["pytorch", "chain", "chain_aa", "exits", "pruning", "mpee", "graph", "mpee_graph"]
    row = result["variants"][0]
    assert row["torch_threads"] == 1 and row["latency"]["n"] == 7 and row["speedup_baseline"] == "chain"
    assert [p["runtime"] for p in result["measurement"]["passes"]] == ["onnxruntime", "pytorch"]
    assert result["variants"][1:] == before["variants"]      # the onnxruntime rows are untouched

    # Another measurement in OUT: the PyTorch rows of the old one are not mixed in.
    assert bench_main([str(built / "bundle"), "--input", str(data), "--out", str(out), "--threads", "1",
                       "--warmup", "0", "--no-sweep", "--no-static"]) == 0
    result = json.loads((out / "results.json").read_text())
    assert "pytorch" not in [v["variant"] for v in result["variants"]]
    assert any("belongs to another measurement" in n for n in result["notes"])

    # Other examples than the measured ones are refused.
    res = CliRunner().invoke(pytorch_main, [str(ref), "--input", str(_data(tmp_path / "other.jsonl", 5)),
                                            "--threads", "1", "--out", str(out), "--max-examples", "5"])
    assert res.exit_code == 2 and "is not what was measured" in res.output


def test_pytorch_pass_mean_pooled(built, tmp_path):
    """A mean-pooled reference: exit L's head on the token mean (as the reference graphs compute it)."""
    from transformers import BertForSequenceClassification

    from mpee_export.baselines.bench_pytorch import pytorch_variant
    from mpee_runtime.core.flops import FlopsModel
    ref = _reference(tmp_path / "ref", pooling="mean")
    model = BertForSequenceClassification.from_pretrained(str(ref / REFERENCE_HF)).eval()
    ids = torch.tensor([[2, 30, 31, 40, 33, 3]])
    with torch.no_grad():
        hidden = model.bert(input_ids=ids).last_hidden_state
        want = model.classifier(torch.tanh(model.bert.pooler.dense(hidden.mean(dim=1))))[0]
        cls = model(input_ids=ids).logits[0]
    assert int(want.argmax()) != int(cls.argmax()) or not torch.allclose(want, cls)
    fm = FlopsModel(32, 37, 2, 3)
    out = pytorch_variant(ref / REFERENCE_HF, "mean", fm, 1).run(ids.numpy(), torch.zeros_like(ids).numpy())
    assert out.label_index == int(want.argmax()) and out.flops == fm.full_flops(6)
    out = pytorch_variant(ref / REFERENCE_HF, "cls", fm, 1).run(ids.numpy(), torch.zeros_like(ids).numpy())
    assert out.label_index == int(cls.argmax())


def test_pytorch_pass_needs_a_measurement_and_a_reference(built, tmp_path):
    from mpee_export.baselines.bench_pytorch import main as pytorch_main
    ref, data = _reference(tmp_path / "ref"), _data(tmp_path / "dev.jsonl")
    res = CliRunner().invoke(pytorch_main, [str(ref), "--input", str(data), "--out", str(tmp_path / "none")])
    assert res.exit_code == 2 and "run mpee-bench BUNDLE" in res.output
    out = tmp_path / "bench"
    assert bench_main([str(built / "bundle"), "--input", str(data), "--out", str(out), "--threads", "1",
                       "--warmup", "0", "--no-sweep", "--no-static", "--max-examples", "2"]) == 0
    shutil.rmtree(ref / REFERENCE_HF)
    res = CliRunner().invoke(pytorch_main, [str(ref), "--input", str(data), "--out", str(out)])
    assert res.exit_code == 2 and "no hf/" in res.output
