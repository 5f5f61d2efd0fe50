#!/usr/bin/env bash
# Check the device runtime on aarch64 (Raspberry Pi 4/5, 64-bit OS) under qemu user-mode emulation:
#   1. build the tiny test bundle and PyTorch's answers on the host (.venv, x86-64, with torch);
#   2. assemble an aarch64 Python 3.11 from Debian arm64 packages plus aarch64 wheels from PyPI
#      (numpy, onnxruntime, tokenizers, pytest, hypothesis and mpee-runtime built from ./runtime; no torch);
#   3. run tests/runtime there with qemu -cpu cortex-a72 (the Pi 4's core);
#   4. run `python -m mpee_runtime BUNDLE --input ... --output ...` under each emulated CPU and on x86-64,
#      and compare: same labels and exit layers, probabilities within AARCH64_ATOL.
# It proves correctness on aarch64, not speed: measure latency on the device.
#
# Usage: scripts/test-aarch64.sh            (root, or sudo, for apt on the first run; see docs/raspberry-pi.md)
# Environment:
#   MPEE_BUNDLE=DIR          also compare on this (real) bundle, with SST-2-like sentences
#   AARCH64_CACHE=DIR        downloads and the assembled rootfs [~/.cache/mpee-aarch64]
#   AARCH64_ORT_VERSION=V    onnxruntime for aarch64 [pinned in scripts/aarch64/constraints.txt]
#   AARCH64_CPUS="..."       qemu CPU models for the prediction comparison [cortex-a72 cortex-a76]
#   AARCH64_PYTEST_CPUS="..."  qemu CPU models that run tests/runtime [cortex-a72]
#   AARCH64_ATOL=X           probability tolerance, x86-64 vs aarch64 [1e-5]
#   AARCH64_ATOL_INT8=X      the same for int8 bundles [1e-2]; the aarch64 CPUs must still agree to AARCH64_ATOL
#   AARCH64_KEEP=1           keep the work folder (bundle, predictions, logs)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
source scripts/aarch64/lib.sh

read -r -a CPUS <<< "${AARCH64_CPUS:-cortex-a72 cortex-a76}"
read -r -a PYTEST_CPUS <<< "${AARCH64_PYTEST_CPUS:-cortex-a72}"
ATOL=${AARCH64_ATOL:-1e-5}
FAILED=()
TIMES=()
t_start=$SECONDS
t_last=$SECONDS
lap() { TIMES+=("$(printf '%-40s %4ds' "$1" $((SECONDS - t_last)))"); t_last=$SECONDS; }

mkdir -p "$AARCH64_CACHE"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mpee-aarch64.XXXXXX")
if [ "${AARCH64_KEEP:-0}" = 1 ]; then log "work folder kept: $WORK"; else trap 'rm -rf "$WORK"' EXIT; fi

# --- host side: the venv with torch (scripts/setup.sh makes it on a fresh machine) and qemu ---------
[ -x .venv/bin/python ] || scripts/setup.sh
HOST_PY=$REPO/.venv/bin/python
ensure_qemu
lap "host venv + qemu"

# --- aarch64 Python: Debian arm64 packages unpacked into a cached rootfs ----------------------------
ensure_rootfs
lap "rootfs (Debian arm64 debs)"

# --- aarch64 wheels: mpee-runtime[test]'s requirements, pinned by constraints.txt -------------------
cp -r runtime "$WORK/src"   # built from a copy: no build/ left in the repo
rm -rf "$WORK/src/build" "$WORK"/src/*.egg-info "$WORK/src/mpee_runtime/__pycache__"
host_pip wheel -q --no-deps -w "$WORK/dist" "$WORK/src" >/dev/null
RT_WHEEL=$(ls "$WORK"/dist/mpee_runtime-*.whl)
sed "${AARCH64_ORT_VERSION:+s/^onnxruntime==.*/onnxruntime==$AARCH64_ORT_VERSION/}" scripts/aarch64/constraints.txt \
  > "$WORK/constraints.txt"
key=$( (cat "$WORK/constraints.txt"; sed -n '/^dependencies/p; /^test *=/p' runtime/pyproject.toml
        echo "${PIP_TARGET_ARGS[*]}") | sha256sum | cut -c1-12)
SITE=$AARCH64_CACHE/site-$key
if [ ! -e "$SITE/.complete" ]; then
  log "downloading aarch64 wheels (pip download --platform manylinux_*_aarch64)"
  wheels=$AARCH64_CACHE/wheels-$key
  host_pip download -q "${PIP_TARGET_ARGS[@]}" -c "$WORK/constraints.txt" -d "$wheels" "$RT_WHEEL[test]"
  tmp=$(mktemp -d "$AARCH64_CACHE/site.tmp.XXXXXX")
  find "$wheels" -name '*.whl' ! -name 'mpee_runtime-*' -print0 |
    xargs -0 "$HOST_PY" -m pip --disable-pip-version-check install -q --no-deps "${PIP_TARGET_ARGS[@]}" \
      --target "$tmp" 2> >(grep -v "^WARNING: Location 'file:" >&2)
  touch "$tmp/.complete"
  rm -rf "$SITE" "$wheels"; mv "$tmp" "$SITE"
fi
host_pip install -q --no-deps "${PIP_TARGET_ARGS[@]}" --target "$WORK/rt" "$RT_WHEEL"
ARM_PATH=$WORK/rt:$SITE
lap "aarch64 wheels + mpee-runtime"

# --- the tiny bundle and PyTorch's answers (x86-64, torch) ------------------------------------------
"$HOST_PY" tests/runtime/make_bundle.py "$WORK/tiny"
lap "tiny bundle (torch, x86-64)"

# --- under emulation --------------------------------------------------------------------------------
declare -A PY   # cpu model -> launcher of the emulated python
arm() { local cpu=$1; shift; PYTHONPATH=$ARM_PATH PYTHONDONTWRITEBYTECODE=1 PYTHONNOUSERSITE=1 "${PY[$cpu]}" "$@"; }

# Predict texts with BUNDLE on x86-64 (host venv) once and on each emulated CPU; compare. int8 bundles get
# a looser probability tolerance against x86-64 (its int8 kernels round differently), and the aarch64
# CPUs must then agree with each other to ATOL.
predict_and_compare() {   # name bundle texts [mpee-run options...]
  local name=$1 bundle=$2 texts=$3 cpu atol=$ATOL; shift 3
  if grep -q '"precision": *"int8"' "$bundle/manifest.json"; then atol=${AARCH64_ATOL_INT8:-1e-2}; fi
  "$HOST_PY" -m mpee_runtime "$bundle" --input "$texts" --output "$WORK/$name.x86_64.jsonl" "$@" \
    > "$WORK/$name.x86_64.summary.json" 2> "$WORK/$name.x86_64.log" ||
    { cat "$WORK/$name.x86_64.log" >&2; die "x86-64 run of $name failed"; }
  for cpu in "${CPUS[@]}"; do
    local out=$WORK/$name.$cpu.jsonl
    printf '  %-40s ' "$name on $cpu:"
    if arm "$cpu" -m mpee_runtime "$bundle" --input "$texts" --output "$out" "$@" > "$out.summary.json" \
        2> "$out.log" && "$HOST_PY" scripts/aarch64/compare_preds.py --atol "$atol" "$WORK/$name.x86_64.jsonl" "$out"
    then :; else echo "  (stderr: $(tail -n 3 "$out.log"))"; FAILED+=("$name on $cpu"); fi
    lap "predict $name ($cpu)"
    if [ "$atol" != "$ATOL" ] && [ "$cpu" != "${CPUS[0]}" ] && [ -s "$out" ] && [ -s "$WORK/$name.${CPUS[0]}.jsonl" ]; then
      printf '  %-40s ' "$name, $cpu vs ${CPUS[0]}:"
      "$HOST_PY" scripts/aarch64/compare_preds.py --atol "$ATOL" "$WORK/$name.${CPUS[0]}.jsonl" "$out" ||
        FAILED+=("$name, $cpu vs ${CPUS[0]}")
    fi
  done
}

for cpu in "${CPUS[@]}" "${PYTEST_CPUS[@]}"; do
  [ -n "${PY[$cpu]:-}" ] && continue
  PY[$cpu]=$(make_python "$cpu" "$WORK/root-$cpu")
  if ! arm "$cpu" - > "$WORK/versions-$cpu.txt" <<'EOF'
import importlib.util, platform, sys
import numpy, onnxruntime, tokenizers, mpee_runtime
assert platform.machine() == "aarch64", platform.machine()
assert importlib.util.find_spec("torch") is None and importlib.util.find_spec("transformers") is None
print(f"python {platform.python_version()} ({platform.machine()}), numpy {numpy.__version__}, "
      f"onnxruntime {onnxruntime.__version__}, tokenizers {tokenizers.__version__}")
EOF
  then die "the aarch64 interpreter cannot import the runtime under qemu -cpu $cpu (see above)"; fi
done
lap "aarch64 imports"

for cpu in "${PYTEST_CPUS[@]}"; do
  log "tests/runtime under qemu -cpu $cpu"
  MPEE_TEST_BUNDLE=$WORK/tiny arm "$cpu" -m pytest -q -p no:cacheprovider -m "not slow" tests/runtime || FAILED+=("pytest on $cpu")
  lap "pytest tests/runtime ($cpu)"
done

log "predictions: x86-64 vs aarch64"
predict_and_compare tiny-t0.6 "$WORK/tiny/bundle" scripts/aarch64/texts-tiny.jsonl --threshold 0.6
predict_and_compare tiny-patience "$WORK/tiny/bundle" scripts/aarch64/texts-tiny.jsonl --policy patience --threshold 1 \
  --keep-ratio 0.3
if [ -n "${MPEE_BUNDLE:-}" ]; then
  [ -f "$MPEE_BUNDLE/manifest.json" ] || die "MPEE_BUNDLE=$MPEE_BUNDLE has no manifest.json"
  predict_and_compare real-default "$MPEE_BUNDLE" scripts/aarch64/sst2-sample.jsonl
  predict_and_compare real-t0.6 "$MPEE_BUNDLE" scripts/aarch64/sst2-sample.jsonl --policy entropy --threshold 0.6
fi

# --- summary ----------------------------------------------------------------------------------------
echo
echo "== aarch64 summary"
echo "qemu:    $(qemu-aarch64-static --version | head -n1)"
echo "aarch64: $(cat "$WORK/versions-${CPUS[0]}.txt")"
echo "x86-64:  $("$HOST_PY" -c 'import numpy, onnxruntime, tokenizers, platform
print(f"python {platform.python_version()}, numpy {numpy.__version__}, onnxruntime {onnxruntime.__version__}, tokenizers {tokenizers.__version__}")')"
echo "cpus:    tests on ${PYTEST_CPUS[*]:-(none)}; predictions on ${CPUS[*]}; bundles: tiny${MPEE_BUNDLE:+, $MPEE_BUNDLE}"
printf '  %s\n' "${TIMES[@]}"
echo "total: $((SECONDS - t_start))s (cache: $AARCH64_CACHE)"
if [ ${#FAILED[@]} -gt 0 ]; then
  printf 'FAILED: %s\n' "${FAILED[@]}" >&2
  exit 1
fi
echo "OK: aarch64 predictions match x86-64${PYTEST_CPUS[*]:+; tests/runtime (vs PyTorch) passed}"
