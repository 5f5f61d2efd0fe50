#!/usr/bin/env bash
# Set up, then the whole path on SST-2: train MPEE on a short schedule, evaluate a threshold x keep-ratio
# sweep, export the bundle (validated against PyTorch, threshold calibrated on dev), an int8 bundle and the
# optimum reference, run the bundle on the dev set with mpee-run, and print the benchmark table.
# Usage: GLUE_DIR=/path/to/glue scripts/quickstart.sh   (GLUE_DIR holds SST-2/train.tsv and SST-2/dev.tsv)
set -euo pipefail
cd "$(dirname "$0")/.."
GLUE_DIR=${GLUE_DIR:-../shared/data/glue}
if [ ! -f "$GLUE_DIR/SST-2/train.tsv" ]; then
  echo "No GLUE data at $GLUE_DIR: download it with the standard GLUE script (download_glue_data.py, https://gluebenchmark.com/tasks) and set GLUE_DIR." >&2
  exit 2
fi
scripts/setup.sh
. .venv/bin/activate
OUT=${OUT:-artifacts/quickstart}
THREADS=${THREADS:-2}
rm -rf "$OUT"
mkdir -p "$OUT"
echo "== train (${TRAIN_SAMPLES:-8000} SST-2 sentences, 1 epoch)"
mpee-train --task sst2 --data "$GLUE_DIR" --out "$OUT/ckpt" --max-train-samples "${TRAIN_SAMPLES:-8000}"
echo "== evaluate (PyTorch)"
mpee-eval "$OUT/ckpt" --data "$GLUE_DIR" --sweep --thresholds 0,0.05,0.1,0.2,0.3,0.4,0.5,0.6 \
  --keep-ratios 0.7,1.0 --json "$OUT/eval.json"
echo "== export (fp32, validated on 200 dev examples, threshold calibrated within 1 point)"
mpee-export "$OUT/ckpt" "$OUT/bundle" --data "$GLUE_DIR" --calibrate --max-drop 1.0
echo "== export (int8, threshold calibrated within 1 point: quantization moves the entropies, so the fp32 threshold does not carry over)"
mpee-export "$OUT/ckpt" "$OUT/bundle-int8" --data "$GLUE_DIR" --quantize int8 --calibrate --max-drop 1.0
mpee-export reference "$OUT/ckpt" "$OUT/reference"
echo "== run the bundle on SST-2 dev with the device runtime"
mpee-run "$OUT/bundle" --input "$GLUE_DIR/SST-2/dev.tsv" --output "$OUT/preds.jsonl" --threads "$THREADS"
echo "== benchmark (interleaved, $THREADS threads; then PyTorch alone; then the table)"
mpee-bench "$OUT/bundle" --input "$GLUE_DIR/SST-2/dev.tsv" --reference "$OUT/reference" \
  --int8 "$OUT/bundle-int8" --threads "$THREADS" --max-drop 1.0 --out "$OUT/bench" > /dev/null
python -m mpee_export.baselines.bench_pytorch "$OUT/reference" --input "$GLUE_DIR/SST-2/dev.tsv" --threads "$THREADS" \
  --out "$OUT/bench"
mpee-bench report "$OUT/bench"
