#!/usr/bin/env bash
# Every cost benchmark at full size on one GPU, within 8 minutes; each part under its own timeout.
#
#   bash bench/gpu.sh                 # on the GPU machine: JSON to $OUT (or bench/results), then the tables
#   SMOKE=1 bash bench/gpu.sh         # the same sequence at smoke sizes on the CPU (tests/test_bench.py)
#   COMPILE=1 bash bench/gpu.sh       # then also decoding compiled, dense and pruned, batch 1 (about 4 more minutes)
#
# Budget (seconds): Qwen2-Audio-7B training/cache/scaling 140, largest batch 90, decoding and
# serving 120, SALMONN-13B 110 (plain, then checkpointed at batch 8), report 10: 470 s of 480. A part cut by its timeout keeps what it
# wrote so far (each part's result is saved as soon as it is done).
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
DEST=${OUT:-bench/results}
mkdir -p "$DEST"
status=0

run() {  # run SECONDS NAME ARGS...: one bench process under a timeout, JSON to $DEST/NAME.json
    local seconds=$1 name=$2
    shift 2
    echo "== $name (${seconds}s): python -m bench $*"
    timeout --signal=TERM --kill-after=10 "$seconds" "$PY" -m bench "$@" --out "$DEST/$name.json" || {
        echo "== $name: exit $?" >&2
        status=1
    }
}

if [ "${SMOKE:-0}" = "1" ]; then
    run 300 gpu-smoke-qwen --smoke --device cpu --reps 1 --parts scaling,largest
    run 300 gpu-smoke-salmonn --smoke --device cpu --reps 1 --full-size salmonn-13b
    files=("$DEST/gpu-smoke-qwen.json" "$DEST/gpu-smoke-salmonn.json")
else
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    run 140 qwen2-audio-7b --full-size qwen2-audio-7b --reps 3 --parts training,cache,scaling
    run 90 qwen2-audio-7b-largest --full-size qwen2-audio-7b --parts largest
    run 120 qwen2-audio-7b-decoding --full-size qwen2-audio-7b --reps 2 --parts decoding,serving
    run 110 salmonn-13b --full-size salmonn-13b --reps 3
    if [ "${COMPILE:-0}" = "1" ]; then  # outside the 8-minute budget: four compiles of the 7B's decoding step
        run 300 qwen2-audio-7b-compile --full-size qwen2-audio-7b --reps 4 --parts compile
    fi
    files=("$DEST"/qwen2-audio-7b*.json "$DEST/salmonn-13b.json")
fi
existing=()
for f in "${files[@]}"; do [ -f "$f" ] && existing+=("$f"); done
if [ ${#existing[@]} -gt 0 ]; then
    timeout 60 "$PY" -m bench.report "${existing[@]}" --markdown "$DEST/BENCHMARKS.gpu.md" || status=1
fi
exit $status
