#!/usr/bin/env bash
# Regenerate requirements/lock.txt: every package of the toolkit and of its extras (test, webui,
# gpu-asr, trackers) pinned with == and its hashes, resolved by uv for Linux x86_64 and Python 3.11.
#
#   bash scripts/update_lock.sh                  # resolve today's newest versions within setup.cfg
#   bash scripts/update_lock.sh --upgrade-package transformers   # move one package, keep the rest
#
# When: after changing a range in setup.cfg, or to take new releases on purpose. Then run
# `bash scripts/test.sh` (it reinstalls from the new lock) and commit the lock with the change.
# Installs never resolve: scripts/setup_env.sh installs exactly this file (--no-deps --require-hashes).
#
# Why a lock: with the ranges of setup.cfg alone, two installs a month apart differ (between
# 10 November and 2 December 2026 alone: onnxruntime 1.31.1 -> 1.32.0, transformers 5.22.2 -> 5.23.0,
# fastapi, pydantic, regex and 20 more), and one fresh install failed the real-Whisper test
# ("Peter Piper picked a peck of pickled peppers." read as "Peter Piper, big tapek, and big old
# peppers."). That exact failing set could not be rebuilt afterwards: with this lock the test
# passes, and it also passes with every other candidate checked (onnxruntime 1.31.1 and 1.32.0 for
# faster-whisper's Silero VAD; CTranslate2 4.8.5 forced to each CPU instruction set). What was
# shown instead: CTranslate2's int8 kernels give different words for the same audio on different
# instruction sets (CT2_FORCE_CPU_ISA=GENERIC/AVX/AVX2/AVX512), so tiny.en output is not
# bit-stable across machines even with identical packages. The test therefore checks character
# error rates with stated bounds (tests/data/test_data_prepare.py).
#
# The binary pairs that pip metadata does not express live in requirements/pins.txt.
# typing is left out: resemblyzer declares the Python 2 backport, which has no release for 3.11.
set -euo pipefail
cd "$(dirname "$0")/.."
uv_version=0.13.9
if ! command -v uv >/dev/null 2>&1 || [ "$(uv --version | cut -d' ' -f2)" != "$uv_version" ]; then
  python3 -m pip install -q "uv==$uv_version"
fi
uv pip compile setup.cfg --extra test --extra webui --extra gpu-asr --extra trackers \
  --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
  --generate-hashes --no-emit-package typing -c requirements/pins.txt \
  --custom-compile-command "bash scripts/update_lock.sh" \
  -o requirements/lock.txt "$@"
echo "wrote requirements/lock.txt ($(grep -c '==' requirements/lock.txt) packages)" >&2
