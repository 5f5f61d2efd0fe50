"""Interleaved ratio: fused full model time / chain time at full depth (keep ratio 1), per input length,
for several bundles at once (issue 22). Each step runs every variant once, in a fresh random order; the
figure is the median over steps of the per-step ratio full / chain (so a slow moment hits both).

Usage: python benchmarks/results/long_inputs/ab_ratio.py REF_FOLDER BUNDLE [BUNDLE ...] --tsv imdb.tsv
       [--tokens 25,400] [--steps 40] [--threads 2] [--int8]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from profile_ops import pick_input

from mpee_runtime.core.engine import MpeeEngine
from mpee_runtime.core.policy import NO_EXIT
from mpee_runtime.core.session import open_session


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("ref", type=Path)
    ap.add_argument("bundles", type=Path, nargs="+")
    ap.add_argument("--tsv", type=Path, required=True)
    ap.add_argument("--tokens", default="25,400")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--int8", action="store_true", help="against model_fused_int8.onnx")
    a = ap.parse_args()
    full = open_session(a.ref / ("model_fused_int8.onnx" if a.int8 else "model_fused.onnx"), threads=a.threads)
    names = {i.name for i in full.get_inputs()}
    engines = {f"{b}#{j}": MpeeEngine(b, threads=a.threads) for j in range(2) for b in a.bundles}   # two loads: A/A
    rng = random.Random(0)
    for tokens in (int(t) for t in a.tokens.split(",")):
        ids, types = pick_input(next(iter(engines.values())), a.tsv, tokens)
        feeds = {k: v for k, v in {"input_ids": ids, "token_type_ids": types,
                                   "attention_mask": ids * 0 + 1}.items() if k in names}
        runs = {"full": lambda feeds=feeds: full.run(None, feeds)}
        for k, e in engines.items():
            runs[k] = (lambda e=e, ids=ids, types=types: e.run_ids(ids, types, **NO_EXIT, keep_ratio=1.0))
        for f in runs.values():
            for _ in range(3):
                f()
        ratios = {k: [] for k in engines}
        for _ in range(a.steps):
            order = list(runs)
            rng.shuffle(order)
            t = {}
            for k in order:
                s = time.perf_counter_ns()
                runs[k]()
                t[k] = time.perf_counter_ns() - s
            for k in engines:
                ratios[k].append(t["full"] / t[k])
        print(f"{ids.shape[1]} tokens ({a.steps} steps, {a.threads} threads, full {'int8' if a.int8 else 'fp32'}):")
        for k, r in ratios.items():
            q = statistics.quantiles(r, n=4)
            print(f"  {k}: full/chain median {statistics.median(r):.3f} (IQR {q[0]:.3f}-{q[2]:.3f})")


if __name__ == "__main__":
    main()
