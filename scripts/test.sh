#!/usr/bin/env bash
# Set up, then run the whole test suite: ruff, then the three pytest tiers (unit: seconds each; integration:
# subprocesses, the optimum export, thread pools; slow: end to end on real GLUE data), then the runtime's
# tests again in a virtual environment that has no torch and no transformers.
# Usage: GLUE_DIR=/path/to/glue scripts/test.sh [pytest args]     TIERS="unit" for the unit tests only
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# The JavaScript examples' packages (examples/node, examples/web: onnxruntime and tokenizers.js, pinned by their
# lock files); their tests skip, saying why, where npm is missing.
if command -v npm >/dev/null; then
  for example in examples/node examples/web; do
    if [ -f "$example/package-lock.json" ]; then
      npm ci --prefix "$example" --no-audit --no-fund --loglevel=error
    fi
  done
else
  echo "npm not found: the Node.js and web examples' tests will be skipped" >&2
fi
export GLUE_DIR=${GLUE_DIR:-../shared/data/glue}
.venv/bin/ruff check .
declare -A MARK=([unit]="not integration and not slow" [integration]="integration" [slow]="slow")
# The integration and slow tiers hold few tests of minutes each: list each test as it starts and ends (-v), and
# say every 2 minutes that the tier is still running, so a long test is not mistaken for a hang. pytest runs in
# the foreground: a background job of a script ignores SIGINT, and so would the commands the tests interrupt.
declare -A SHOW=([unit]="-q" [integration]="-v" [slow]="-v")
for tier in ${TIERS:-unit integration slow}; do
  echo "== pytest: $tier tier"
  start=$SECONDS
  (while sleep 120; do echo "   ... $tier tier still running ($(( (SECONDS - start) / 60 )) min)"; done) &
  heartbeat=$!
  status=0
  .venv/bin/python -m pytest ${SHOW[$tier]} --durations=5 -m "${MARK[$tier]:?unknown tier $tier}" "$@" || status=$?
  kill $heartbeat 2>/dev/null || true
  [ $status -eq 0 ] || exit $status
  echo "== $tier tier passed in $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s"
done

# The device runtime alone: install it (not editable) where torch cannot be imported, and check it
# against PyTorch's answers computed above for a tiny bundle.
bundle_dir=$(mktemp -d)
trap 'rm -rf "$bundle_dir"' EXIT
.venv/bin/python tests/runtime/make_bundle.py "$bundle_dir"
[ -x .venv-runtime/bin/python ] || "${PYTHON:-python3}" -m venv .venv-runtime
.venv-runtime/bin/python -m pip install -q "./runtime[test,serve]"
if .venv-runtime/bin/python -c "import torch" 2>/dev/null || .venv-runtime/bin/python -c "import transformers" 2>/dev/null; then
  echo "runtime venv must not contain torch or transformers" >&2; exit 1
fi
echo "== pytest: the runtime's tests without torch (unit and integration)"
MPEE_TEST_BUNDLE="$bundle_dir" .venv-runtime/bin/python -m pytest -q -p no:cacheprovider -m "not slow" tests/runtime
