#!/usr/bin/env bash
# Set everything up (with the test extra), then run the test suite.
#   bash scripts/test.sh            # the default suite (what CI runs)
#   bash scripts/test.sh --runslow  # slow tests too
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh --test
exec .venv/bin/python -m pytest "$@"
