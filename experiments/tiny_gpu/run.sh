#!/usr/bin/env bash
# The testbed's GPU experiments, in one call of at most ~10 minutes: what a 2-core CPU cannot afford.
#
#   A  the 16 x 32 testbed trained FROM SCRATCH (pretrain_tiny_lalm_16x32_gpu.yaml), then its AHAMask
#      table for gr, src, asv, asr (the 1000-step schedule of every other testbed's table)
#   B  the instruction-free pretraining experiment: AHAMask table of checkpoints/tiny_lalm_12x32s_if
#      (12x32s trained on with 40 % of its ASR examples given without instruction) for gr, src, asv, asr
#   C  long mask schedule on checkpoints/tiny_lalm_12x32s: src and asv with <task>_tiny_long.yaml
#   D  seeds 0, 1, 2 of the 1000-step src and asv masks on checkpoints/tiny_lalm_12x32s
#
# Every job runs in its own process on the same GPU (the models are small: the GPU is shared, not
# filled), each under a deadline, and the results (no Lightning .ckpt files) are packed into
# $OUT/results.tar.gz.part-* whatever finished. Run from the repository root:
#   OUT=/tmp/out DEADLINE=560 bash experiments/tiny_gpu/run.sh
# Quick plumbing check on a CPU (minutes): QUICK=1 OUT=/tmp/out bash experiments/tiny_gpu/run.sh
#
# On a bare GPU machine without espeak-ng/sox, put them in .devkit/ (ignored by git): bin/ holds
# wrappers that run real/espeak-ng and real/sox with LD_LIBRARY_PATH=lib/ (the libraries `ldd`
# lists, glibc's own excepted) and ESPEAK_DATA_PATH=share/ (espeak-ng-data with phon*, intonations,
# lang/, voices/, en_dict). How it ran on 2026-12-04: BENCHMARKS.md, the section on this script.
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-runs/tiny_gpu_out}
DEADLINE=${DEADLINE:-560}   # seconds from start until every job is stopped and results are packed
QUICK=${QUICK:-}
PY=${PY:-python3}
R=${RUNS:-runs/tiny_gpu}
DATA=${DATA:-data/synth}
T0=$(date +%s)
mkdir -p "$R" "$OUT"
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
[ -d .devkit/bin ] && export PATH="$PWD/.devkit/bin:$PATH"   # espeak-ng and sox carried to a bare machine
left() { local s=$((DEADLINE - ($(date +%s) - T0))); echo $((s > 1 ? s : 1)); }
log() { echo "[tiny_gpu $(($(date +%s) - T0))s] $*"; }

if [ -n "$QUICK" ]; then  # the same plumbing in CPU minutes
  N=200; EXTRA=200; STEPS=20; LONG=20; TB=1; PRE=(--trainer.max_steps 30 --trainer.val_check_interval 30
    --trainer.limit_val_batches 1 --trainer.precision 32-true --data.init_args.num_workers 1)
  SEEDS=0; WORKERS=2
else
  N=6000; EXTRA=24000; STEPS=1000; LONG=6000; TB=6; PRE=(); SEEDS=0,1,2; WORKERS=16
fi
GPU_SET=(--set data.init_args.num_workers 2)

log "synthesising $DATA (n $N, asr-extra $EXTRA, $WORKERS workers)"
$PY -m ahamask_lightning.cli.main data synth --out "$DATA" --n "$N" --seed 0 --workers "$WORKERS" \
  --asr-extra "$EXTRA" > "$R/synth.log" 2>&1 || { log "synthesis failed"; tail -5 "$R/synth.log"; }
log "corpus ready"
if command -v nvidia-smi > /dev/null; then  # GPU load through the run, for BENCHMARKS.md
  # started from a subshell so that `wait` below does not wait for it
  ( nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 20 > "$R/gpu.csv" 2>&1 &
    echo $! > "$R/smi.pid" )
fi

NICE=0  # B-D run at a lower CPU priority than A, whose table must finish inside the call
job() {  # job NAME CMD...: run under the deadline, log to $R/NAME.log
  local name=$1; shift
  ( timeout -k 5 "$(left)" nice -n "$NICE" "$@" > "$R/$name.log" 2>&1; echo "rc=$?" >> "$R/$name.log" ) &
}
tiny() {  # tiny NAME CHECKPOINT TASK [args]: one task's four conditions
  local name=$1 ckpt=$2 task=$3; shift 3
  job "$name" $PY -m ahamask_lightning.reproduce tiny --data "$DATA" --checkpoint "$ckpt" --tasks "$task" \
    --out "$R/$name" --test-batches "$TB" "${GPU_SET[@]}" "$@"
}

# B: the instruction-free experiment
NICE=10
for t in gr src asv asr; do tiny "if_$t" checkpoints/tiny_lalm_12x32s_if "$t" --steps "$STEPS"; done
# C: the long schedule on 12x32s (a time guard keeps it inside the call)
for t in src asv; do
  tiny "long_$t" checkpoints/tiny_lalm_12x32s "$t" --schedule tiny_long --steps "$LONG" \
    --set trainer.max_time 00:00:05:30
done
# D: seeds of the 1000-step masks
for t in src asv; do
  job "seeds_$t" $PY -m ahamask_lightning.reproduce ablations --family tiny --task "$t" --only seeds \
    --seeds "$SEEDS" --steps "$STEPS" --test-batches "$TB" --data "$DATA" --checkpoint checkpoints/tiny_lalm_12x32s \
    --out "$R/seeds_$t" "${GPU_SET[@]}"
done

# A: from-scratch pretraining, then its table (one process per task)
NICE=0
(
  sed "s#data/synth/#$DATA/#g" experiments/pretrain_tiny_lalm_16x32_gpu.yaml > "$R/pretrain.yaml"
  timeout -k 5 "$(left)" $PY -m ahamask_lightning.cli.main fit --config "$R/pretrain.yaml" \
    --trainer.default_root_dir "$R/pretrain" --model.init_args.out_dir "$R/tiny_lalm_16x32_gpu" "${PRE[@]}" \
    > "$R/pretrain.log" 2>&1
  echo "rc=$?" >> "$R/pretrain.log"
  if [ -f "$R/tiny_lalm_16x32_gpu/model.safetensors" ]; then
    log "pretraining done; its table"
    for t in gr src asv asr; do tiny "gpu_$t" "$R/tiny_lalm_16x32_gpu" "$t" --steps "$STEPS"; done
    wait
  fi
) &

wait
[ -f "$R/smi.pid" ] && kill "$(cat "$R/smi.pid")" 2>/dev/null
log "all jobs ended; packing"
tar --exclude='*.ckpt' --exclude='*.wav' -czf "$R.tar.gz" "$R"
split -b 15M -d "$R.tar.gz" "$OUT/results.tar.gz.part-"
ls -la "$OUT"
log "done"
