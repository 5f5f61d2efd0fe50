"""Compare two mpee-run --output files: same labels and exit layers, probabilities within --atol.

    python compare_preds.py x86.jsonl aarch64.jsonl [--atol 1e-5]     exit 1 on any mismatch
"""

from __future__ import annotations

import argparse
import json
import sys


def load(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("reference")
    ap.add_argument("candidate")
    ap.add_argument("--atol", type=float, default=1e-5)
    args = ap.parse_args()
    ref, cand = load(args.reference), load(args.candidate)
    problems = [] if len(ref) == len(cand) else [f"{len(ref)} vs {len(cand)} predictions"]
    worst = 0.0
    for r, c in zip(ref, cand):
        if (r["label"], r["exit_layer"]) != (c["label"], c["exit_layer"]):
            problems.append(f"example {r['index']}: {r['label']}@{r['exit_layer']} vs {c['label']}@{c['exit_layer']}")
        if len(r["probs"]) != len(c["probs"]):
            problems.append(f"example {r['index']}: {len(r['probs'])} vs {len(c['probs'])} probabilities")
            continue
        worst = max([worst] + [abs(a - b) for a, b in zip(r["probs"], c["probs"])])
    if worst > args.atol:
        problems.append(f"max |dp| {worst:.2e} > atol {args.atol:g}")
    exits = [c["exit_layer"] for c in cand]
    print(f"{len(cand)} examples, exit layers {min(exits, default=0)}-{max(exits, default=0)}, "
          f"max |dp| {worst:.1e} (atol {args.atol:g}): {'MISMATCH' if problems else 'same'}")
    for p in problems[:10]:
        print("  " + p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
