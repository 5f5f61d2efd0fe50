#!/usr/bin/env bash
# Reproduce benchmarks/results/<task>_throughput/ from a trained checkpoint:
#   benchmarks/run_throughput.sh TASK CKPT [ARTIFACTS_DIR]      (GLUE_DIR must point at the GLUE data)
# Exports what ARTIFACTS_DIR (default artifacts/<task>) lacks, as benchmarks/run_task.sh does (fp32 bundle
# calibrated within 0.5 points, int8 bundle within 1 point, the full-model reference), then runs
# `mpee-bench --throughput` on the dev set: every variant at batch sizes BATCH_SIZES (default 1,4,16,64),
# THREADS threads in all (default 2), REPEATS interleaved repetitions (default 3). Results go to RESULTS
# (default benchmarks/results/<task>_throughput/): throughput.json, throughput.md, throughput.png.
set -euo pipefail
cd "$(dirname "$0")/.."
TASK=$1; CKPT=$2; ART=${3:-artifacts/$1}
THREADS=${THREADS:-2}; REPEATS=${REPEATS:-3}; BATCH_SIZES=${BATCH_SIZES:-1,4,16,64}
GLUE_DIR=${GLUE_DIR:?set GLUE_DIR}
RES=${RESULTS:-benchmarks/results/${TASK}_throughput}
. .venv/bin/activate
mkdir -p "$ART" "$RES"
DEV=$(python -c "from mpee_export.data.glue import get_task, resolve_task_dir, split_path; \
t = get_task('$TASK'); print(split_path(resolve_task_dir('$GLUE_DIR', t), t, 'dev'))")
[ -f "$ART/bundle/manifest.json" ] || mpee-export "$CKPT" "$ART/bundle" --data "$GLUE_DIR" --task "$TASK" \
  --calibrate --max-drop 0.5 --force | tee "$RES/export_fp32.txt"
[ -f "$ART/bundle-int8/manifest.json" ] || mpee-export "$CKPT" "$ART/bundle-int8" --data "$GLUE_DIR" \
  --task "$TASK" --quantize int8 --calibrate --max-drop 1.0 --force | tee "$RES/export_int8.txt"
[ -f "$ART/reference/reference.json" ] || { rm -rf "$ART/reference"; mpee-export reference "$CKPT" "$ART/reference"; }
mpee-bench --throughput "$ART/bundle" --input "$DEV" --reference "$ART/reference" --int8 "$ART/bundle-int8" \
  --batch-sizes "$BATCH_SIZES" --repeats "$REPEATS" --threads "$THREADS" --out "$RES"
