"""The bundle at full depth against the user's own classifier, on every example of a dev file (issue 33): with a
frozen backbone, threshold 0 and keep ratio 1 must give the classifier's label on every example and its
probabilities within 1e-5, both as `mpee-export reference` exports it (the fused fp32 graph, onnxruntime) and as
it is (PyTorch).

    python benchmarks/full_depth_vs_classifier.py BUNDLE REFERENCE CLASSIFIER --input DEV.tsv [--out result.json]
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
import onnxruntime as ort
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from mpee_runtime.bundle.reference import FUSED
from mpee_runtime.cli.common import input_columns
from mpee_runtime.core.engine import MpeeEngine
from mpee_runtime.text.readers import read_examples


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


@click.command()
@click.argument("bundle", type=click.Path(exists=True, path_type=Path))
@click.argument("reference", type=click.Path(exists=True, path_type=Path))
@click.argument("classifier", type=click.Path(exists=True, path_type=Path))
@click.option("--input", "input_path", required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None)
def main(bundle: Path, reference: Path, classifier: Path, input_path: Path, out: Path | None) -> None:
    engine = MpeeEngine(bundle, threads=2)
    columns, _ = input_columns(input_path, engine.manifest.task)
    examples = read_examples(input_path, columns, labels=engine.labels)
    session = ort.InferenceSession(str(reference / FUSED), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    tok = AutoTokenizer.from_pretrained(str(classifier))
    model = AutoModelForSequenceClassification.from_pretrained(str(classifier)).eval()
    same_onnx = same_torch = 0
    diff_onnx = diff_torch = 0.0
    for ex in examples:
        got = engine.predict(ex.text, ex.pair, threshold=0.0, keep_ratio=1.0, policy="entropy")
        ids, types = engine.encode(ex.text, ex.pair)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": types}
        fused = softmax(session.run(None, {k: v for k, v in feeds.items() if k in names})[0][0])
        with torch.no_grad():
            enc = {k: torch.from_numpy(v) for k, v in feeds.items() if k in tok.model_input_names}
            mine = model(**enc).logits.softmax(-1)[0].numpy()
        probs = np.asarray(got.probs)
        same_onnx += got.label_index == int(fused.argmax())
        same_torch += got.label_index == int(mine.argmax())
        diff_onnx = max(diff_onnx, float(np.abs(probs - fused).max()))
        diff_torch = max(diff_torch, float(np.abs(probs - mine).max()))
    record = {"examples": len(examples), "same_label_as_reference_fused": same_onnx,
              "max_prob_diff_reference_fused": diff_onnx, "same_label_as_classifier_pytorch": same_torch,
              "max_prob_diff_classifier_pytorch": diff_torch, "bundle": str(bundle), "reference": str(reference),
              "classifier": str(classifier), "threshold": 0.0, "keep_ratio": 1.0}
    click.echo(json.dumps(record, indent=1))
    if out is not None:
        out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
