"""Layer graphs against PyTorch on long inputs (the export validates on at most 63 tokens): every graph of
BUNDLE on the real intermediate states of IMDB reviews of about 400 and 510 tokens, keep ratio 1 and the
bundle's own, max |ONNX - PyTorch| per output (validate.check_graphs' comparison).

Usage: python benchmarks/results/long_inputs/long_parity.py CKPT BUNDLE --tsv imdb.tsv
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from mpee_export.export.validate import check_graphs
from mpee_export.model.checkpoint import load_checkpoint
from mpee_runtime.bundle import manifest as S


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("ckpt", type=Path)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--tsv", type=Path, required=True)
    a = ap.parse_args()
    model, tokenizer = load_checkpoint(a.ckpt)
    with open(a.tsv, newline="", encoding="utf-8") as f:
        texts = [r["sentence"] for r in csv.DictReader(f, delimiter="\t")]
    enc = [tokenizer(t, truncation=True, max_length=model.mpee.max_length) for t in texts]
    by_len = sorted(enc, key=lambda e: len(e["input_ids"]))
    picks = [min(by_len, key=lambda e: abs(len(e["input_ids"]) - n)) for n in (400, 510)]
    examples = [(np.asarray([e["input_ids"]], np.int64), np.asarray([e["token_type_ids"]], np.int64)) for e in picks]
    entries = S.Manifest.load(a.bundle).graphs
    check = check_graphs(model, a.bundle, entries, examples)
    print(f"tokens {[x[0].shape[1] for x in examples]}: max |diff| {check.max_abs_diff_overall:.3g}, errors {check.errors}")
    for k, v in sorted(check.max_abs_diff.items(), key=lambda kv: -kv[1])[:6]:
        print(f"  {k}: {v:.3g}")


if __name__ == "__main__":
    main()
