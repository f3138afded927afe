#!/usr/bin/env bash
# Create (or reuse) the project virtualenv .venv and install the toolkit into it.
#
#   bash scripts/setup_env.sh          # the toolkit
#   bash scripts/setup_env.sh --test   # the same (the lock holds every extra: test, webui, gpu-asr)
#
# System packages (Debian/Ubuntu): espeak-ng (demo and test speech), ffmpeg (compressed media in
# data prep). Installed with apt-get when missing and we are root (or have sudo).
# Python packages come from requirements/lock.txt only (exact versions and hashes, Linux x86_64,
# Python 3.11): torch 2.11.0 with torchaudio 2.11.0 (PyPI's Linux wheels are CUDA 13 builds that
# also run on CPU-only machines), CTranslate2's CUDA 12 libraries, and every extra. For another
# CUDA build of torch, regenerate the lock against that index (scripts/update_lock.sh --index-url ...).
set -euo pipefail
cd "$(dirname "$0")/.."

# --test: the test suite's system packages too (chromium for the web UI's browser test); the
# lock already holds the Python test extra.
with_test=0
[ "${1:-}" = "--test" ] && with_test=1

missing=()
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)
if [ "$with_test" = 1 ]; then
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then apt=(apt-get); elif command -v sudo >/dev/null 2>&1; then apt=(sudo apt-get); else
    echo "error: missing system packages: ${missing[*]}; install them (apt-get install ${missing[*]}) and rerun" >&2
    exit 2
  fi
  echo "installing system packages: ${missing[*]}" >&2
  DEBIAN_FRONTEND=noninteractive "${apt[@]}" update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -qq "${missing[@]}" >/dev/null
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ] && ! "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "error: the lock (requirements/lock.txt) is for Python 3.11, and $python is $($python --version 2>&1); run with PYTHON=python3.11" >&2
  exit 2
fi
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $($python --version)" >&2
  "$python" -m venv .venv
fi

# Every package comes from the committed lock (requirements/lock.txt: exact versions and hashes,
# made by scripts/update_lock.sh), so an install today and one next month give the same program.
# The toolkit itself is then installed on top, editable and without dependencies.
# Reinstall only when the lock or the package metadata changed since the last install.
lock=requirements/lock.txt
stamp=.venv/.toolkit-install-stamp
want="$(cat "$lock" setup.cfg pyproject.toml | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "installing the locked packages into .venv (first time: several minutes, torch is large)" >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --require-hashes -r "$lock"
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
  echo "$want" > "$stamp"
fi
.venv/bin/python -c "import torch, torchaudio, TTS, trainer; print('environment ready: torch', torch.__version__, '| CUDA', torch.cuda.is_available())" >&2
