#!/usr/bin/env bash
# The lint gate CI runs before the tests: ruff's linter and its formatter check, on the whole tree
# (configuration in pyproject.toml). `bash scripts/lint.sh --fix` rewrites what ruff can fix.
set -euo pipefail
cd "$(dirname "$0")/.."
ruff=.venv/bin/ruff
[ -x "$ruff" ] || bash scripts/setup_env.sh --test
if [ "${1:-}" = "--fix" ]; then
  "$ruff" check --fix .
  "$ruff" format .
else
  "$ruff" check .
  "$ruff" format --check .
fi
