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
# long-document schedule chosen in benchmarks/results/imdb/README.md). A run interrupted in training resumes
# where it stopped when started again; steps already done are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
IMDB_CSV=${IMDB_CSV:?set IMDB_CSV to the IMDB train.csv}
ART=${1:-artifacts/imdb}; THREADS=${THREADS:-2}; TRAIN_SAMPLES=${TRAIN_SAMPLES:-8000}
PRUNE_LAYERS=${PRUNE_LAYERS:-1,2,3,4}; KEEP_RATIO=${KEEP_RATIO:-0.5}
SCHEDULE=(--prune-layers "$PRUNE_LAYERS" --keep-ratio "$KEEP_RATIO")
VALIDATION_EXAMPLES=${VALIDATION_EXAMPLES:-2500}
BACKBONE_ARGS=(); if [ -n "${BACKBONE:-}" ]; then BACKBONE_ARGS=(--backbone "$BACKBONE"); fi
BENCH_ARGS=(); if [ -n "${BENCH_EXAMPLES:-}" ]; then BENCH_ARGS=(--max-examples "$BENCH_EXAMPLES"); fi
RES=${RESULTS:-benchmarks/results/imdb}
. .venv/bin/activate
mkdir -p "$ART" "$RES"
COLS=(--text-column review --label-column sentiment)
[ -f "$ART/dev.csv" ] || mpee-split "$IMDB_CSV" --out "$ART" --dev-size 2500 "${COLS[@]}" --seed 0
if [ ! -f "$ART/ckpt/train_log.json" ]; then
  echo "== train: $TRAIN_SAMPLES reviews, 512 tokens head+tail"
  mpee-train --train "$ART/train.csv" --dev "$ART/dev.csv" "${COLS[@]}" --max-length 512 --truncation head+tail \
    --max-train-samples "$TRAIN_SAMPLES" --max-eval-samples 1000 --batch-size 32 --grad-accum 4 --save-every 25 \
    "${BACKBONE_ARGS[@]}" --out "$ART/ckpt" 2>&1 | tr '\r' '\n' | grep -v '^epoch [0-9]*/[0-9]*: ' | tee "$RES/train.txt"
fi
echo "== export fp32 (calibrated within 0.5 points, parity on $VALIDATION_EXAMPLES), int8 (within 1 point), reference"
mpee-export "$ART/ckpt" "$ART/bundle" --dev "$ART/dev.csv" "${SCHEDULE[@]}" --calibrate --max-drop 0.5 \
  --validation-examples "$VALIDATION_EXAMPLES" --force | tee "$RES/export_fp32.txt"
mpee-export "$ART/ckpt" "$ART/bundle-int8" --dev "$ART/dev.csv" "${SCHEDULE[@]}" --quantize int8 --calibrate \
  --max-drop 1.0 --validation-examples 500 --force | tee "$RES/export_int8.txt"
cp "$ART/bundle/validation.json" "$RES/validation_fp32.json"
cp "$ART/bundle-int8/validation.json" "$RES/validation_int8.json"
rm -rf "$ART/reference"
mpee-export reference "$ART/ckpt" "$ART/reference"
echo "== benchmark on the dev split, by input length"
mpee-bench "$ART/bundle" --input "$ART/dev.csv" --reference "$ART/reference" --int8 "$ART/bundle-int8" \
  --threads "$THREADS" --thread-pool global --no-sweep --no-static --block 8 --warmup 10 "${BENCH_ARGS[@]}" \
  --out "$RES/bench" > /dev/null
mpee-bench report "$RES/bench" | tee "$RES/bench/bench.txt"
echo "== pruning schedules at inputs over 256 tokens"
python benchmarks/pruning_schedule.py "$ART/bundle" --input "$ART/dev.csv" --reference "$ART/reference" \
  --threads "$THREADS" --out "$RES/schedules"
