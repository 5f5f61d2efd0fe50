#!/usr/bin/env bash
# Set up, then run the whole test suite (unit tests and the slow end-to-end tests on real GLUE data).
# Usage: GLUE_DIR=/path/to/glue scripts/test.sh [pytest args]   (-m "not slow" for the unit tests only)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export GLUE_DIR=${GLUE_DIR:-../shared/data/glue}
.venv/bin/ruff check .
.venv/bin/python -m pytest -q "$@"
