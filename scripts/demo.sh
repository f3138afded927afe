#!/usr/bin/env bash
# Set everything up, then fine-tune the tiny base on the bundled demo data (CPU or GPU).
#   bash scripts/demo.sh                  # English demo
#   bash scripts/demo.sh --language am    # Amharic demo (vocabulary extension)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python utils/gpt_train.py --demo "$@"
