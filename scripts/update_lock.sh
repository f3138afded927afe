#!/usr/bin/env bash
# Regenerate requirements/lock.txt: every package of the toolkit and of its extras (test, webui,
# gpu-asr) pinned with == and its hashes, resolved by uv for Linux x86_64 and Python 3.11.
#
#   bash scripts/update_lock.sh                  # resolve today's newest versions within setup.cfg
#   bash scripts/update_lock.sh --upgrade-package transformers   # move one package, keep the rest
#
# When: after changing a range in setup.cfg, or to take new releases on purpose. Then run
# `bash scripts/test.sh` (it reinstalls from the new lock) and commit the lock with the change.
# Installs never resolve: scripts/setup_env.sh installs exactly this file (--no-deps --require-hashes).
#
# Why a lock: the ranges in setup.cfg let onnxruntime move from 1.31.1 to 1.32.0 in late November.
# faster-whisper runs its Silero VAD on onnxruntime; with 1.32.0 the VAD returned different speech
# regions for the bundled espeak-ng test speech, and Whisper tiny.en read "Peter Piper picked a peck
# of pickled peppers." as "Peter Piper, big tapek, and big old peppers.". Nothing in the repository
# had changed.
#
# typing is left out: resemblyzer declares the Python 2 backport, which has no release for 3.11.
set -euo pipefail
cd "$(dirname "$0")/.."
uv_version=0.13.9
if ! command -v uv >/dev/null 2>&1 || [ "$(uv --version | cut -d' ' -f2)" != "$uv_version" ]; then
  python3 -m pip install -q "uv==$uv_version"
fi
uv pip compile setup.cfg --extra test --extra webui --extra gpu-asr \
  --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
  --generate-hashes --no-emit-package typing -c requirements/pins.txt \
  --custom-compile-command "bash scripts/update_lock.sh" \
  -o requirements/lock.txt "$@"
echo "wrote requirements/lock.txt ($(grep -c '==' requirements/lock.txt) packages)" >&2
