#!/usr/bin/env bash
# One GPU session's measurements for BENCHMARKS.md, run on the device machine:
#   bash scripts/gpu_bench_session.sh OUT_DIR [parity fast search_rate speaking stages fast_noround fast_nocond lowvram_nocond rerun fast_cppwrap fast_autotune oom synth stock lowvram lowvram_profile tier12 micro14 micro14_flash micro14_cppwrap imports big compile | all]
# Expects the Coqui stack as wheels in .whl/ (see ../shared/OFFLINE_GPU.md); each step has its own
# time limit so a slow one cannot take the rest with it. Results: OUT_DIR/*.json and *.log.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: gpu_bench_session.sh OUT_DIR [parity fast search_rate speaking stages fast_noround fast_nocond lowvram_nocond rerun fast_cppwrap fast_autotune oom synth stock lowvram lowvram_profile tier12 micro14 micro14_flash micro14_cppwrap imports big compile | all]}
WHAT=${2:-all}
mkdir -p "$OUT"
# every step's limit is cut to what is left of BENCH_LIMIT_S (the device's per-call limit, less the
# bundling at the end), so the bundle below is always written; a step with under 20 s left is skipped
START=$(date +%s)
LIMIT=${BENCH_LIMIT_S:-575}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if [ -d .whl ] && ! python3 -c "import TTS" 2>/dev/null; then
  [ -d /tmp/site/TTS ] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  mkdir -p /tmp/site/torchcodec /tmp/site/torchcodec-0.10.0.dist-info
  touch /tmp/site/torchcodec/__init__.py
  printf 'Metadata-Version: 2.1\nName: torchcodec\nVersion: 0.10.0\n' > /tmp/site/torchcodec-0.10.0.dist-info/METADATA
  export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
# clocks, power and temperature every 5 s: throttling shows as an epoch's rate falling with the SM clock
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,utilization.gpu --format=csv \
  -l 5 > "$OUT/gpu_clocks.csv" 2>&1 &
CLOCKS=$!
trap 'kill $CLOCKS 2>/dev/null' EXIT
W=/tmp/bgt
timeout() {
  local want=$1 rest=$(( LIMIT - ($(date +%s) - START) )); shift
  if [ "$rest" -lt 20 ]; then echo "skipped (no time left): $*" >&2; return 124; fi
  command timeout $(( want < rest ? want : rest )) "$@"
}
run() { [ "$WHAT" = all ] || [[ " $WHAT " == *" $1 "* ]]; }
if run parity; then
  # the harness: stock Coqui step and ours in one process, loss and gradient parity, the lever ladder
  timeout 300 python3 scripts/bench_train.py --workdir /tmp/bench --clips 1024 --steps 12 --warmup 4 \
    --stock fp32:3 --ours 126 --compile-rung --profile --out "$OUT/harness.json" > "$OUT/harness.log" 2>&1
fi
if run fast; then
  # the default path: automatic micro-batch, every safe lever, profile of 4 steps in epoch 2
  # (the start-up's stack samples: where the first run's seconds before its first step go)
  timeout 330 python3 scripts/bench_gpt_train.py --workdir $W --clips 4096 --epochs 3 --profile-steps 4 \
    --startup-profile "$OUT/startup_first.txt" --out "$OUT/e2e_default.json" --no-progress > "$OUT/e2e_default.log" 2>&1
  cp $W/profile.txt $W/profile_trace.json.gz "$OUT/" 2>/dev/null  # the trace: chrome://tracing or Perfetto
fi
if run fast_noround; then
  # the same run with packed rows at their exact lengths (--no-round-lengths): what the rounding costs or saves
  timeout 330 python3 scripts/bench_gpt_train.py --workdir $W --clips 4096 --epochs 3 --no-round-lengths \
    --out "$OUT/e2e_noround.json" --no-progress > "$OUT/e2e_noround.log" 2>&1
fi
if run fast_nocond; then
  # the defaults with the conditioning encoder left eager (--no-compile-conditioning), profiled as "fast" is
  timeout 330 python3 scripts/bench_gpt_train.py --workdir $W --clips 4096 --epochs 3 --no-compile-conditioning \
    --profile-steps 4 --out "$OUT/e2e_nocond.json" --no-progress > "$OUT/e2e_nocond.log" 2>&1
  cp $W/profile.txt "$OUT/profile_nocond.txt" 2>/dev/null
fi
if run lowvram_nocond; then
  # the low-VRAM preset under 7 GiB with the conditioning encoder eager (its own eager checkpoint)
  timeout 240 python3 scripts/bench_gpt_train.py --workdir $W --clips 1024 --epochs 2 --speed low-vram \
    --no-compile-conditioning --memory-cap-gib 7 --out "$OUT/e2e_lowvram_nocond.json" --no-progress \
    > "$OUT/e2e_lowvram_nocond.log" 2>&1
fi
if run rerun; then
  # a second run on the same clips: the clip cache (waveforms, DVAE codes) and the compile cache are warm
  TORCH_LOGS=recompiles timeout 200 python3 scripts/bench_gpt_train.py --workdir $W --clips 4096 --epochs 1 \
    --measure-imports --startup-profile "$OUT/startup_rerun.txt" --out "$OUT/e2e_rerun.json" --no-progress \
    > "$OUT/e2e_rerun.log" 2>&1
fi
if run fast_cppwrap; then
  # the defaults with inductor's C++ wrapper (TORCHINDUCTOR_CPP_WRAPPER=1): less host time per compiled
  # block call, where the forward is host-bound; its own compile (the wrapper is part of the cache key)
  TORCHINDUCTOR_CPP_WRAPPER=1 timeout 360 python3 scripts/bench_gpt_train.py --workdir $W --clips 4096 --epochs 3 \
    --profile-steps 4 --out "$OUT/e2e_cppwrap.json" --no-progress > "$OUT/e2e_cppwrap.log" 2>&1
  cp $W/profile.txt "$OUT/profile_cppwrap.txt" 2>/dev/null
fi
if run fast_autotune; then
  # the defaults with inductor's matmul autotuning (TORCHINDUCTOR_MAX_AUTOTUNE_GEMM=1): Triton matmul
  # templates beside cuBLAS, and the elementwise work after a matmul fused into it where a template
  # wins; two epochs, its own compile (the setting is part of the cache key)
  TORCHINDUCTOR_MAX_AUTOTUNE_GEMM=1 timeout 400 python3 scripts/bench_gpt_train.py --workdir $W --clips 4096 \
    --epochs 2 --startup-profile "$OUT/startup_autotune.txt" --out "$OUT/e2e_autotune.json" --no-progress \
    > "$OUT/e2e_autotune.log" 2>&1
fi
if run oom; then
  # the OOM fallback for real: a fixed micro-batch of 128 in 20 GiB
  timeout 200 python3 scripts/bench_gpt_train.py --workdir $W --clips 1024 --epochs 2 --batch-size 128 \
    --memory-cap-gib 20 --out "$OUT/e2e_oom.json" --no-progress > "$OUT/e2e_oom.log" 2>&1
fi
if run synth; then
  # compiled training blocks next to eager evaluation and test sentences (the run's default hooks)
  timeout 240 python3 scripts/bench_gpt_train.py --workdir $W --clips 1024 --epochs 1 --test-sentences 1 \
    --out "$OUT/e2e_synth.json" --no-progress > "$OUT/e2e_synth.log" 2>&1
fi
if run stock; then
  # the command with every lever off (Coqui's fp32 step at the table's micro-batch 3) next to its
  # defaults, same clips, same call
  timeout 200 python3 scripts/bench_gpt_train.py --workdir $W --clips 1024 --epochs 2 \
    --out "$OUT/e2e_default_1024.json" --no-progress > "$OUT/e2e_default_1024.log" 2>&1
  timeout 250 python3 scripts/bench_gpt_train.py --workdir $W --clips 1024 --epochs 1 --speed stock \
    --out "$OUT/e2e_stock_1024.json" --no-progress > "$OUT/e2e_stock_1024.log" 2>&1
fi
if run lowvram; then
  # an 8 GB card: low-VRAM preset, automatic micro-batch under a 7 GiB cap
  timeout 240 python3 scripts/bench_gpt_train.py --workdir $W --clips 1024 --epochs 2 --speed low-vram \
    --memory-cap-gib 7 --out "$OUT/e2e_lowvram.json" --no-progress > "$OUT/e2e_lowvram.log" 2>&1
fi
if run tier12; then
  # a 12 GB card: the low-VRAM preset with the automatic micro-batch under an 11 GiB cap
  timeout 240 python3 scripts/bench_gpt_train.py --workdir $W --clips 1024 --epochs 2 --speed low-vram \
    --memory-cap-gib 11 --out "$OUT/e2e_tier12.json" --no-progress > "$OUT/e2e_tier12.log" 2>&1
fi
if run lowvram_profile; then
  # where the low-VRAM step's time goes: 4 profiled steps of epoch 2 under the 7 GiB cap
  timeout 300 python3 scripts/bench_gpt_train.py --workdir $W --clips 1024 --epochs 3 --speed low-vram \
    --memory-cap-gib 7 --profile-steps 4 --out "$OUT/e2e_lowvram_profile.json" --no-progress > "$OUT/e2e_lowvram_profile.log" 2>&1
  cp $W/profile.txt "$OUT/profile_lowvram.txt" 2>/dev/null
fi
if run micro14; then
  # the default levers at the low-VRAM micro-batch (14 x 18, no cap): the per-micro-step cost without checkpointing
  timeout 240 python3 scripts/bench_gpt_train.py --workdir $W --clips 1024 --epochs 3 --batch-size 14 --grad-accum 18 \
    --profile-steps 4 --out "$OUT/e2e_micro14.json" --no-progress > "$OUT/e2e_micro14.log" 2>&1
  cp $W/profile.txt "$OUT/profile_micro14.txt" 2>/dev/null
fi
if run micro14_flash; then
  # the same with flash attention only (--no-cudnn-attention): cuDNN against flash at a small micro-batch
  timeout 240 python3 scripts/bench_gpt_train.py --workdir $W --clips 1024 --epochs 3 --batch-size 14 --grad-accum 18 \
    --no-cudnn-attention --out "$OUT/e2e_micro14_flash.json" --no-progress > "$OUT/e2e_micro14_flash.log" 2>&1
fi
if run micro14_cppwrap; then
  # the same with inductor's C++ wrapper (TORCHINDUCTOR_CPP_WRAPPER=1): less Python per compiled call,
  # where micro-batch 14 is host-bound (GPU busy 0.215 at 1.2 ms of host time per block call)
  TORCHINDUCTOR_CPP_WRAPPER=1 timeout 300 python3 scripts/bench_gpt_train.py --workdir $W --clips 1024 --epochs 3 \
    --batch-size 14 --grad-accum 18 --profile-steps 4 --out "$OUT/e2e_micro14_cppwrap.json" --no-progress \
    > "$OUT/e2e_micro14_cppwrap.log" 2>&1
fi
if run imports; then
  # where a fresh process's import time goes (twice: the second finds the byte-code written by the first)
  for i in 1 2; do
    python3 -X importtime -c "import utils.gpt_train, utils.finetune.recipe, trainer; from TTS.tts.layers.xtts.trainer.gpt_trainer import GPTTrainer" \
      2> "$OUT/importtime_$i.txt"
  done
fi
if run big; then
  # all-in on long epochs: 20,480 clips (19,840 train), 2 epochs, the default evaluation cadence;
  # its own call with the full 600 s: clip synthesis (in parallel processes), preflight (10 s), the
  # clip cache (68 s for 19,840 clips) and the probes come first; recompile reasons in the log
  TORCH_LOGS=recompiles timeout 570 python3 scripts/bench_gpt_train.py --workdir /tmp/bgt_big --clips 20480 --epochs 2 \
    --out "$OUT/e2e_big.json" --no-progress > "$OUT/e2e_big.log" 2>&1
fi
if run search_rate; then
  # trials per hour of the hyperparameter search at full XTTS v2 GPT size on the 4,096-clip set the
  # "fast" step made (its clip cache and compile cache are reused): 4 trials of one epoch each
  if [ -d $W/clips ] && [ -d $W/base ]; then
    s0=$(date +%s)
    timeout 240 python3 scripts/search_hparams.py --dataset $W/clips --base-model $W/base --language en \
      --trials 4 --budget-epochs 1 --out $W/study --no-progress > "$OUT/search_rate.log" 2>&1
    echo "{\"trials\": 4, \"wall_s\": $(( $(date +%s) - s0 )), \"rc\": $?}" > "$OUT/search_rate.json"
    cp $W/study/summary.csv $W/study/summary.md "$OUT/" 2>/dev/null
  fi
fi
if run speaking; then
  # a small XTTS from random weights, all three stages, on 2 hours of espeak-ng speech in two voices;
  # the held-out speech comes back as FLAC for scoring on the CPU machine (score_speaking_model.py)
  timeout 560 python3 scripts/train_speaking_model.py /tmp/speak --espeak .espeak --minutes "${SPEAK_MINUTES:-6.4}" \
    > "$OUT/speaking.log" 2>&1
  tar czf "$OUT/speaking.tgz" -C /tmp/speak summary.json data/heldout.json wavs \
    $(cd /tmp/speak && python3 -c "import json; d=json.load(open('summary.json')); print(' '.join('data/wavs/'+p.split('/')[-1] for p in d['data']['references'].values()))" 2>/dev/null) \
    $(cd /tmp/speak && find runs -maxdepth 3 \( -name 'metrics.jsonl' -o -name '*.png' -o -name '*_report.json' -o -name stages.json \) 2>/dev/null)
fi
if run stages; then
  # samples/s of the DVAE, GPT and decoder stages in one --stages dvae,gpt,decoder run on a random
  # full-size XTTS v2 base (synthetic espeak-free clips), the three side by side
  timeout 300 python3 scripts/bench_stages.py --workdir /tmp/bench_stages --clips 256 --epochs 2 \
    --out "$OUT/stages.json" > "$OUT/stages.log" 2>&1
fi
if run compile; then
  # the default path without torch.compile
  timeout 330 python3 scripts/bench_gpt_train.py --workdir $W --clips 4096 --epochs 3 --no-compile \
    --out "$OUT/e2e_nocompile.json" --no-progress > "$OUT/e2e_nocompile.log" 2>&1
fi
kill $CLOCKS 2>/dev/null
ls -la "$OUT"
# one file to bring back (the device returns a limited number of files per call)
tar czf "$OUT.tgz" -C "$(dirname "$OUT")" "$(basename "$OUT")" && echo "bundle: $OUT.tgz"
