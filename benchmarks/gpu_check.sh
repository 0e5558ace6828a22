#!/usr/bin/env bash
# `make gpu-check`: everything that needs a CUDA GPU, in a few minutes, with one markdown file of figures.
#
#   benchmarks/gpu_check.sh [--cpu] [--quick] [--out DIR]
#
# Runs, on the first CUDA device: the training-step benchmark (eager / compiled / CUDA graphs, fp32 and
# bf16), the data-path benchmark at COCO scale, a short real `hgpose train` on generated data (bf16,
# --compile reduce-overhead), `hgpose evaluate`, `hgpose export` and a 1-process nccl torchrun launch.
# Writes DIR/gpu_check.md (default DIR: gpu-check-out) with every step's result, time and figures, and
# the logs beside it. Exits 1 when a step failed.
#
# Without a CUDA GPU it says so in one line and exits 1. --cpu runs the same steps on the CPU (gloo for
# torchrun, no compile), --quick with tiny settings: the test suite runs `--cpu --quick` so that this
# script does not rot.
set -u

PY=${PYTHON:-python}
OUT=gpu-check-out
CPU=0
QUICK=0
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) CPU=1 ;;
    --quick) QUICK=1 ;;
    --out) OUT="$2"; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done

if [ "$CPU" = 0 ]; then
  if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu-check: no CUDA GPU visible to $("$PY" -c 'import torch; print("torch", torch.__version__)' 2>/dev/null || echo "$PY"); nothing run (--cpu runs the CPU parts)" >&2
    exit 1
  fi
  DEVICE=cuda
  COMPILE=reduce-overhead
else
  DEVICE=cpu
  COMPILE=off  # compiling takes minutes on a small CPU; CUDA graphs do not exist there
fi

if [ "$QUICK" = 1 ]; then
  MODEL=(--depth 2 --features 16 --input-size 64)
  STEP_ARGS=(--batch-size 2 --steps 1 --input-size 64 --features 16)
  DATA_ARGS=(--quick)
  TRAIN_IMAGES=16; VAL_IMAGES=6; EPOCHS=1; SIZE=64
else
  MODEL=()
  STEP_ARGS=(--steps 20)
  DATA_ARGS=(--seconds 5)
  TRAIN_IMAGES=800; VAL_IMAGES=150; EPOCHS=2; SIZE=256
fi

mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
REPORT="$OUT/gpu_check.md"
DATA="$OUT/data"
FAILED=0
ROWS=()
DETAILS=()

step() {  # step NAME COMMAND...: run it, log it, time it, record the result
  local name=$1; shift
  local log="$OUT/logs/$name.log"
  local start end rc
  echo "gpu-check: $name ..." >&2
  start=$(date +%s.%N)
  "$@" >"$log" 2>&1
  rc=$?
  end=$(date +%s.%N)
  local seconds
  seconds=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
  if [ $rc = 0 ]; then
    ROWS+=("| $name | ok | $seconds |")
  else
    ROWS+=("| $name | FAILED (exit $rc, see logs/$name.log) | $seconds |")
    FAILED=1
  fi
  DETAILS+=("### $name" "" "\`$*\`" "" '```' "$(tail -n 40 "$log" | tr -d '\r')" '```' "")
}

RUN="$OUT/run"
rm -rf "$RUN" "$OUT/run_torchrun"
step train_step "$PY" benchmarks/train_step.py --device "$DEVICE" "${STEP_ARGS[@]}"
step data_pipeline "$PY" benchmarks/data_pipeline.py "${DATA_ARGS[@]}"
step synth "$PY" -m hgpose synth "$DATA" --train-images "$TRAIN_IMAGES" --val-images "$VAL_IMAGES"
step prepare "$PY" -m hgpose prepare --data "$DATA" --input-size "$SIZE" --no-progress
step train "$PY" -m hgpose train --data "$DATA" --out "$RUN" --epochs "$EPOCHS" --precision bf16 \
  --compile "$COMPILE" --device "$DEVICE" --workers 2 --no-progress --no-report "${MODEL[@]}"
step evaluate "$PY" -m hgpose evaluate --checkpoint "$RUN/best.safetensors" --data "$DATA" --split val2017 \
  --device "$DEVICE" --out "$OUT/evaluate.json" --no-progress
step export "$PY" -m hgpose export --checkpoint "$RUN/best.safetensors" --out "$OUT/model.onnx"
step torchrun "$PY" -m torch.distributed.run --standalone --nproc-per-node 1 -m hgpose train --data "$DATA" \
  --out "$OUT/run_torchrun" --epochs 1 --device "$DEVICE" --workers 0 --no-progress --no-report "${MODEL[@]}"

{
  echo "# hgpose GPU check"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(hostname), mode: $([ "$CPU" = 1 ] && echo CPU || echo GPU)$([ "$QUICK" = 1 ] && echo ', quick (tiny settings)')"
  echo
  "$PY" - <<'EOF'
import os, torch
print(f"- torch {torch.__version__}, CUDA {torch.version.cuda}, {len(os.sched_getaffinity(0))} CPUs")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"- GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}, "
          f"bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}")
EOF
  echo
  echo "| step | result | seconds |"
  echo "| --- | --- | ---: |"
  printf '%s\n' "${ROWS[@]}"
  echo
  if [ -f "$RUN/metrics.csv" ]; then
    echo "Training metrics ($RUN/metrics.csv):"
    echo
    echo '```'
    cat "$RUN/metrics.csv"
    echo '```'
    echo
  fi
  printf '%s\n' "${DETAILS[@]}"
} >"$REPORT"

echo "gpu-check: $([ $FAILED = 0 ] && echo 'all steps ok' || echo 'some steps FAILED'); figures in $REPORT" >&2
exit $FAILED
