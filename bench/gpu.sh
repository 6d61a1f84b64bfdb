#!/usr/bin/env bash
# Every cost benchmark at full size on one GPU, within 8 minutes; each command under its own timeout.
#
#   bash bench/gpu.sh                 # on the GPU machine: JSON to $OUT (or bench/results), then the tables
#   SMOKE=1 bash bench/gpu.sh         # every command of the same sequence at smoke sizes on the CPU
#                                     # (--smoke --device cpu --reps 1; JSON named gpu-smoke-*; tests/test_bench.py)
#   COMPILE=1 bash bench/gpu.sh       # then also decoding compiled, dense and pruned, batch 1 (about 4 more minutes)
#
# Budget (seconds): Qwen2-Audio-7B training/cache/scaling 140, largest batch 90, decoding and
# serving 120, SALMONN-13B 110 (plain, then checkpointed at batch 8), report 10: 470 s of 480.
# Estimates behind the two tightest slots (random bf16 7B on an H100, eager decoding 25-40 ms a step):
# - largest (bench/training.py largest_batch): one model, checkpointing switched on and off; doubling
#   from 1 clip, then bisection to within 1/4, limit 192 clips (bench/models.py); about 10 s plain and
#   50 s checkpointed (about 0.06-0.09 s of step per 30 s clip), plus a build and the process start.
# - decoding and serving: decoding 576 eager steps (static cache not compiled at full size), serving
#   896 (bench/bench_serving.py's docstring), two 7B builds: about 70-100 s.
# A command cut by its timeout keeps what it wrote: each part's result is saved as soon as it is
# done, and scaling, largest and serving also after each row (marked "partial").
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
DEST=${OUT:-bench/results}
mkdir -p "$DEST"
status=0
PREFIX=""
EXTRA=()
if [ "${SMOKE:-0}" = "1" ]; then  # the same commands at smoke sizes (--smoke wins over --full-size's sizes)
    PREFIX="gpu-smoke-"
    EXTRA=(--smoke --device cpu --reps 1)
fi

run() {  # run SECONDS NAME ARGS...: one bench process under a timeout, JSON to $DEST/$PREFIX$NAME.json
    local seconds=$1 name=$2
    shift 2
    [ -n "$PREFIX" ] && seconds=300  # smoke: a CPU shared with other jobs
    echo "== $PREFIX$name (${seconds}s): python -m bench $* ${EXTRA[*]-}"
    timeout --signal=TERM --kill-after=10 "$seconds" "$PY" -m bench "$@" ${EXTRA[@]+"${EXTRA[@]}"} \
        --out "$DEST/$PREFIX$name.json" || {
        echo "== $PREFIX$name: exit $?" >&2
        status=1
    }
}

[ -z "$PREFIX" ] && { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true; }
run 140 qwen2-audio-7b --full-size qwen2-audio-7b --reps 3 --parts training,cache,scaling
run 90 qwen2-audio-7b-largest --full-size qwen2-audio-7b --parts largest
run 120 qwen2-audio-7b-decoding --full-size qwen2-audio-7b --reps 2 --parts decoding,serving
run 110 salmonn-13b --full-size salmonn-13b --reps 3
if [ "${COMPILE:-0}" = "1" ]; then  # outside the 8-minute budget: compiles of the 7B's decoding step
    run 300 qwen2-audio-7b-compile --full-size qwen2-audio-7b --reps 4 --parts compile
fi
files=("$DEST/${PREFIX}"qwen2-audio-7b*.json "$DEST/${PREFIX}salmonn-13b.json")
existing=()
for f in "${files[@]}"; do [ -f "$f" ] && existing+=("$f"); done
if [ ${#existing[@]} -gt 0 ]; then
    timeout 60 "$PY" -m bench.report "${existing[@]}" --markdown "$DEST/BENCHMARKS.gpu.md" || status=1
fi
exit $status
