#!/usr/bin/env bash
# Reproduce benchmarks/results/<task>/ from a trained checkpoint:
#   benchmarks/run_task.sh TASK CKPT [ARTIFACTS_DIR]      (GLUE_DIR must point at the GLUE data)
# Writes bundles to ARTIFACTS_DIR (default artifacts/<task>) and the small results (JSON, Markdown, PNG)
# to RESULTS (default benchmarks/results/<task>/), with the benchmark's rows (rows.jsonl, run.json,
# rows_pytorch.jsonl, run_pytorch.json), from which `mpee-bench report RESULTS` rebuilds its tables.
# Threads: THREADS (default 2); onnxruntime pool: THREAD_POOL (default global: every session of the
# benchmark on one process-wide pool, the chain's fastest setting). Calibration: MAX_DROP_FP32 (default 0.5) and
# MAX_DROP_INT8 (default 1.0) points below the fp32 full model. COMPANION / COMPANION_REF: another model's bundle
# and reference folder, measured in the same pass (mpee-bench --companion; e.g. MiniLM-L6 beside MPNet).
# INT8_POINTS=1: the sweep and the static-depth points on the int8 bundle too (mpee-bench --int8-points).
set -euo pipefail
cd "$(dirname "$0")/.."
TASK=$1; CKPT=$2; ART=${3:-artifacts/$1}; THREADS=${THREADS:-2}; THREAD_POOL=${THREAD_POOL:-global}
MAX_DROP_FP32=${MAX_DROP_FP32:-0.5}; MAX_DROP_INT8=${MAX_DROP_INT8:-1.0}
GLUE_DIR=${GLUE_DIR:?set GLUE_DIR}
RES=${RESULTS:-benchmarks/results/$TASK}
. .venv/bin/activate
mkdir -p "$ART" "$RES"
DEV=$(python -c "from mpee_export.data.glue import get_task, load_split, resolve_task_dir, split_path; \
t = get_task('$TASK'); print(split_path(resolve_task_dir('$GLUE_DIR', t), t, 'dev'))")
echo "== $TASK: PyTorch sweep"
mpee-eval "$CKPT" --data "$GLUE_DIR" --task "$TASK" --sweep --thresholds 0,0.02,0.05,0.1,0.15,0.2,0.3,0.4,0.5,0.6 \
  --keep-ratios 0.3,0.5,0.7,1.0 --json "$RES/eval_sweep.json" --plot "$RES/eval_tradeoff.png"
echo "== $TASK: export fp32 (calibrated within $MAX_DROP_FP32 points), int8 (within $MAX_DROP_INT8), reference"
mpee-export "$CKPT" "$ART/bundle" --data "$GLUE_DIR" --task "$TASK" --calibrate --max-drop "$MAX_DROP_FP32" --force \
  | tee "$RES/export_fp32.txt"
mpee-export "$CKPT" "$ART/bundle-int8" --data "$GLUE_DIR" --task "$TASK" --quantize int8 --calibrate \
  --max-drop "$MAX_DROP_INT8" --force | tee "$RES/export_int8.txt"
cp "$ART/bundle/validation.json" "$RES/validation_fp32.json"
cp "$ART/bundle-int8/validation.json" "$RES/validation_int8.json"
rm -rf "$ART/reference"
mpee-export reference "$CKPT" "$ART/reference"
echo "== $TASK: runtime vs PyTorch on the whole dev set"
mpee-export validate "$ART/bundle" "$CKPT" --data "$GLUE_DIR" --task "$TASK" --validation-examples 100000 \
  --json "$RES/parity_full_dev.json" | tee "$RES/parity_full_dev.txt"
echo "== $TASK: benchmark (onnxruntime variants interleaved, then PyTorch in a process of its own, then the report)"
EXTRA_ARGS=()
if [ -n "${COMPANION:-}" ]; then EXTRA_ARGS=(--companion "$COMPANION"); fi
if [ -n "${COMPANION_REF:-}" ]; then EXTRA_ARGS+=(--companion-reference "$COMPANION_REF"); fi
if [ -n "${INT8_POINTS:-}" ]; then EXTRA_ARGS+=(--int8-points); fi
mpee-bench "$ART/bundle" --input "$DEV" --reference "$ART/reference" --int8 "$ART/bundle-int8" \
  --threads "$THREADS" --thread-pool "$THREAD_POOL" --max-drop "$MAX_DROP_FP32" "${EXTRA_ARGS[@]}" --out "$RES" > /dev/null
python -m mpee_export.baselines.bench_pytorch "$ART/reference" --input "$DEV" --threads "$THREADS" --out "$RES"
mpee-bench report "$RES" | tee "$RES/bench.txt"
