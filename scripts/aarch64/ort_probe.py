"""One cell of scripts/aarch64/ort-survey.sh: import onnxruntime, then run the runtime on the tiny bundle.

    python ort_probe.py DIR     DIR from tests/runtime/make_bundle.py; prints one line per stage
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

print(f"imported onnxruntime {ort.__version__} (numpy {np.__version__})", flush=True)
from mpee_runtime.core.engine import MpeeEngine

folder = Path(sys.argv[1])
engine = MpeeEngine(folder / "bundle", threads=1)
print("session created", flush=True)
worst, bad = 0.0, 0
for case in json.loads((folder / "expected.json").read_text()):
    pred = engine.predict(case["text"], case["pair"], threshold=case["threshold"], keep_ratio=case["keep_ratio"],
                          policy="entropy")
    bad += (pred.label, pred.exit_layer) != (case["label"], case["exit_layer"])
    worst = max(worst, float(np.abs(np.asarray(pred.probs) - case["probs"]).max()))
print(f"predicted: {bad} label/exit mismatches vs PyTorch, max |dp| {worst:.1e}", flush=True)
sys.exit(1 if bad or worst > 1e-5 else 0)
