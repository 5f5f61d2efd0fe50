#!/usr/bin/env bash
# Set up, then train MPEE on a short SST-2 schedule, evaluate a threshold x keep-ratio sweep, print the table.
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
rm -rf "$OUT/ckpt"
mpee-train --task sst2 --data "$GLUE_DIR" --out "$OUT/ckpt" --max-train-samples "${TRAIN_SAMPLES:-8000}" --lr 5e-5
mpee-eval "$OUT/ckpt" --data "$GLUE_DIR" --sweep --thresholds 0,0.05,0.1,0.2,0.3,0.4,0.5,0.6 \
  --keep-ratios 0.7,1.0 --json "$OUT/eval.json"
echo "results: $OUT/eval.json"
