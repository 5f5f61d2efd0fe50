#!/usr/bin/env bash
# Reproduce benchmarks/results/imdb/ (long documents, your own CSV): split IMDB's training reviews into a
# seeded train / dev split, train at 512 tokens head+tail, export fp32 and int8 bundles calibrated on the
# dev split, the reference full models, parity on the whole dev split, the benchmark by input length and
# the pruning-schedule sweep at long inputs.
#   IMDB_CSV=/path/to/imdb/train.csv benchmarks/run_imdb.sh [ARTIFACTS_DIR]
# TRAIN_SAMPLES (default 8000 reviews, 1 epoch), THREADS (default 2); BACKBONE (default: the default backbone;
# e.g. the folder scripts/fetch_mpnet.py prints); VALIDATION_EXAMPLES (fp32 parity, default all 2500),
# BENCH_EXAMPLES (the benchmark's first N dev reviews, default all); PRUNE_LAYERS and KEEP_RATIO: where the
# bundles prune and how much they keep (mpee-export --prune-layers / --keep-ratio; the defaults are the
# long-document schedule chosen in benchmarks/results/imdb/README.md). TRAIN_ARGS: more mpee-train options
# (they come last, so they win: e.g. "--batch-size 16 --grad-accum 1 --lr 3e-5"). DEV_EXAMPLES: calibrate,
# validate and benchmark on the first N dev reviews only (ART/dev_first<N>.csv; a 12-layer model at 512 tokens
# takes about 0.35 s a review per calibration pass here). MAX_DROP_FP32 / MAX_DROP_INT8: calibration, points below
# the fp32 full model (defaults 0.5 / 1.0). COMPANION / COMPANION_REF: another model's bundle and reference,
# measured in the same pass (mpee-bench --companion). MAP=1: the benchmark also runs the static depths and a
# sweep (SWEEP_THRESHOLDS, default 0.05,0.2,0.4,0.6; SWEEP_KEEP_RATIOS, default 0.5,1.0): the points of
# `mpee-bench map`. SCHEDULES=0 skips the pruning-schedule sweep. A run interrupted in training resumes where it
# stopped when started again; steps already done are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
IMDB_CSV=${IMDB_CSV:?set IMDB_CSV to the IMDB train.csv}
ART=${1:-artifacts/imdb}; THREADS=${THREADS:-2}; TRAIN_SAMPLES=${TRAIN_SAMPLES:-8000}
PRUNE_LAYERS=${PRUNE_LAYERS:-1,2,3,4}; KEEP_RATIO=${KEEP_RATIO:-0.5}
SCHEDULE=(--prune-layers "$PRUNE_LAYERS" --keep-ratio "$KEEP_RATIO")
VALIDATION_EXAMPLES=${VALIDATION_EXAMPLES:-2500}
MAX_DROP_FP32=${MAX_DROP_FP32:-0.5}; MAX_DROP_INT8=${MAX_DROP_INT8:-1.0}
read -r -a TRAIN_EXTRA <<< "${TRAIN_ARGS:-}"
BACKBONE_ARGS=(); if [ -n "${BACKBONE:-}" ]; then BACKBONE_ARGS=(--backbone "$BACKBONE"); fi
BENCH_ARGS=(); if [ -n "${BENCH_EXAMPLES:-}" ]; then BENCH_ARGS=(--max-examples "$BENCH_EXAMPLES"); fi
if [ -n "${COMPANION:-}" ]; then BENCH_ARGS+=(--companion "$COMPANION"); fi
if [ -n "${COMPANION_REF:-}" ]; then BENCH_ARGS+=(--companion-reference "$COMPANION_REF"); fi
if [ "${MAP:-0}" = 1 ]; then
  BENCH_ARGS+=(--thresholds "${SWEEP_THRESHOLDS:-0.05,0.2,0.4,0.6}" --keep-ratios "${SWEEP_KEEP_RATIOS:-0.5,1.0}")
else
  BENCH_ARGS+=(--no-sweep --no-static)
fi
RES=${RESULTS:-benchmarks/results/imdb}
. .venv/bin/activate
mkdir -p "$ART" "$RES"
COLS=(--text-column review --label-column sentiment)
[ -f "$ART/dev.csv" ] || mpee-split "$IMDB_CSV" --out "$ART" --dev-size 2500 "${COLS[@]}" --seed 0
if [ ! -f "$ART/ckpt/train_log.json" ]; then
  echo "== train: $TRAIN_SAMPLES reviews, 512 tokens head+tail"
  mpee-train --train "$ART/train.csv" --dev "$ART/dev.csv" "${COLS[@]}" --max-length 512 --truncation head+tail \
    --max-train-samples "$TRAIN_SAMPLES" --max-eval-samples 1000 --batch-size 32 --grad-accum 4 --save-every 25 \
    "${BACKBONE_ARGS[@]}" "${TRAIN_EXTRA[@]}" --out "$ART/ckpt" 2>&1 | tr '\r' '\n' | grep -v '^epoch [0-9]*/[0-9]*: ' | tee "$RES/train.txt"
fi
DEV="$ART/dev.csv"
if [ -n "${DEV_EXAMPLES:-}" ]; then
  DEV="$ART/dev_first$DEV_EXAMPLES.csv"
  python - "$ART/dev.csv" "$DEV" "$DEV_EXAMPLES" <<'PY'
import csv, sys
with open(sys.argv[1], newline="", encoding="utf-8") as f:
    rows = list(csv.reader(f))
with open(sys.argv[2], "w", newline="", encoding="utf-8") as f:
    csv.writer(f).writerows(rows[:1 + int(sys.argv[3])])
PY
fi
echo "== export fp32 (calibrated within $MAX_DROP_FP32 points, parity on $VALIDATION_EXAMPLES), int8 (within $MAX_DROP_INT8), reference"
mpee-export "$ART/ckpt" "$ART/bundle" --dev "$DEV" "${SCHEDULE[@]}" --calibrate --max-drop "$MAX_DROP_FP32" \
  --validation-examples "$VALIDATION_EXAMPLES" --force | tee "$RES/export_fp32.txt"
mpee-export "$ART/ckpt" "$ART/bundle-int8" --dev "$DEV" "${SCHEDULE[@]}" --quantize int8 --calibrate \
  --max-drop "$MAX_DROP_INT8" --validation-examples 500 --force | tee "$RES/export_int8.txt"
cp "$ART/bundle/validation.json" "$RES/validation_fp32.json"
cp "$ART/bundle-int8/validation.json" "$RES/validation_int8.json"
rm -rf "$ART/reference"
mpee-export reference "$ART/ckpt" "$ART/reference"
echo "== benchmark on the dev split, by input length"
mpee-bench "$ART/bundle" --input "$DEV" --reference "$ART/reference" --int8 "$ART/bundle-int8" \
  --threads "$THREADS" --thread-pool global --max-drop "$MAX_DROP_FP32" --block 8 --warmup 10 "${BENCH_ARGS[@]}" \
  --out "$RES/bench" > /dev/null
mpee-bench report "$RES/bench" | tee "$RES/bench/bench.txt"
if [ "${SCHEDULES:-1}" != 0 ]; then
  echo "== pruning schedules at inputs over 256 tokens"
  python benchmarks/pruning_schedule.py "$ART/bundle" --input "$DEV" --reference "$ART/reference" \
    --threads "$THREADS" --out "$RES/schedules"
fi
