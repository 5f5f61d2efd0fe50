"""Two exports of one checkpoint, timed side by side: did a change to the graphs make a bundle faster?

    python benchmarks/compare_bundles.py OLD NEW --input dev.csv [--examples 100] [--engine graph|chain]
        [--point F:R ...] [--threads 2]

Both bundles run the same token ids (the two must have the same tokenizer) at each operating point (threshold
F with the entropy policy, keep ratio R; default: full depth, `0:1`), in mpee-bench's interleaved pass
(`bench.measure.measure`: blocks of 16 examples, a shuffled turn order, one untimed run first), with an A/A control: OLD loaded a second time. Printed per point: mean and p50
latency of each, NEW / OLD (below 1: NEW is faster), the A/A spread, and whether both gave the same exit layer and
label on every example (they should unless the change moved the numbers).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

from mpee_runtime.bench.measure import chain_variant, measure
from mpee_runtime.bench.records import VariantInfo
from mpee_runtime.bundle.manifest import Manifest
from mpee_runtime.core.engine import MpeeEngine
from mpee_runtime.text.readers import Columns, read_examples


def point(text: str) -> tuple[float, float]:
    f, _, r = text.partition(":")
    return float(f), float(r or 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("old", type=Path)
    p.add_argument("new", type=Path)
    p.add_argument("--input", type=Path, required=True)
    p.add_argument("--examples", type=int, default=100)
    p.add_argument("--engine", choices=("chain", "graph"), default="graph")
    p.add_argument("--point", type=point, action="append", help="F:R (entropy threshold, keep ratio)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1)
    a = p.parse_args()
    old, new = Manifest.load(a.old), Manifest.load(a.new)
    if old.tokenizer.sha256 != new.tokenizer.sha256:
        raise SystemExit(f"Error: {a.old} and {a.new} have different tokenizers; compare exports of one checkpoint")
    task = old.task
    common = {"threads": a.threads, "engine": a.engine, "thread_pool": "global"}
    engines = {"old": MpeeEngine(a.old, **common), "new": MpeeEngine(a.new, **common),
               "old_aa": MpeeEngine(a.old, **common)}
    rows = read_examples(a.input, Columns(task.text_a, task.text_b, task.label_column), limit=a.examples)
    ids = [engines["old"].encode(r.text, r.pair) for r in rows]
    print(f"{a.old} against {a.new}: {len(ids)} examples ({np.mean([i.shape[1] for i, _ in ids]):.1f} tokens on "
          f"average), engine {a.engine}, {a.threads} threads, {a.rounds} round(s)\n")
    print("| point (F, r) | old mean ms | new mean ms | new / old (mean) | new / old (p50) | A/A (mean) | "
          "same exit and label |\n|---|---:|---:|---:|---:|---:|---:|")
    for f, r in a.point or [(0.0, 1.0)]:
        info = VariantInfo("", "", threshold=f, keep_ratio=r, policy="entropy")
        variants = [chain_variant(replace(info, name=name), engine) for name, engine in engines.items()]
        for _ in range(a.rounds):
            measure(variants, ids, warmup=0, progress=False)
        rows = {v.name: v.rows for v in variants}
        mean = {k: float(np.mean([x.time_us for x in v])) for k, v in rows.items()}
        p50 = {k: float(np.median([x.time_us for x in v])) for k, v in rows.items()}
        same = sum((x.exit_layer, x.label_index) == (y.exit_layer, y.label_index)
                   for x, y in zip(rows["old"][:len(ids)], rows["new"]))
        print(f"| {f:g}, {r:g} | {mean['old'] / 1e3:.2f} | {mean['new'] / 1e3:.2f} | {mean['new'] / mean['old']:.3f} | "
              f"{p50['new'] / p50['old']:.3f} | {abs(mean['old_aa'] / mean['old'] - 1):.1%} | {same}/{len(ids)} |")

if __name__ == "__main__":
    main()
