#!/usr/bin/env bash
# Every GPU check and benchmark of the kit, by step, each time-boxed.
# Usage, from the repository root on a CUDA machine: OUT=/some/dir bash benchmarks/gpu_suite.sh [STEP|GROUP...]
# Groups: perf (default; issue 15's performance suite, under 8 minutes: perf-main sliding),
#         checks (correctness and the other benchmarks: distributed parallel monitoring data checkpoint
#         checkpoint-sharded transfer pytest; over 10 minutes, split it across device calls), all (both,
#         in several device calls).
# Steps: perf-main (raw loop vs Trainer vs monitors, precisions, activation checkpointing, MoE; gpu_perf.py),
#        sliding (the attention part of gpu_architecture.py), architecture (all of it),
#        throughput (the older Trainer/plain ratio), distributed, parallel, monitoring, data, checkpoint,
#        checkpoint-sharded (async/sync sharded KitCheckpoint under FSDP2 + NCCL; gpu_checkpoint.py), transfer, pytest.
# Wheels the GPU image lacks (deepspeed and its needs) may be put in .whl/; they are installed to /tmp/site.
# Each step is time-boxed and the suite goes on past a failing step. Results, logs and a summary are packed
# into $OUT/results.tgz (and summary.txt beside it).
set -u
OUT=${OUT:-/tmp/kit-gpu-out}
RES=/tmp/kit-gpu-res
mkdir -p "$OUT" "$RES"
export PYTHONUNBUFFERED=1 KIT_CACHE=/tmp/kit-cache
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
# Lay the kit out as it installs (kit/, kit/models, ...) so it imports without pip; run from there.
rm -rf /tmp/k && mkdir -p /tmp/k
cp -r kit /tmp/k/kit && for d in callbacks datamodules models; do cp -r "$d" "/tmp/k/kit/$d"; done
cp -r benchmarks tests pyproject.toml /tmp/k/
cd /tmp/k
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$RES/gpu.txt"
python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)" | tee -a "$RES/gpu.txt"
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(perf)
expanded=()
for s in "${steps[@]}"; do
  case $s in
    perf) expanded+=(perf-main sliding) ;;
    checks) expanded+=(distributed parallel monitoring data checkpoint checkpoint-sharded transfer pytest) ;;
    all) expanded+=(perf-main architecture distributed parallel monitoring data checkpoint checkpoint-sharded transfer pytest) ;;
    *) expanded+=("$s") ;;
  esac
done
steps=("${expanded[@]}")
summary=()
step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "=== $name (limit ${limit}s)"
  timeout "$limit" "$@" > >(tee "$RES/$name.log") 2>&1
  local rc=$?
  summary+=("$name rc=$rc $((SECONDS - t0))s")
}
for s in "${steps[@]}"; do
  case $s in
    perf-main) step perf 320 python3 benchmarks/gpu_perf.py --out "$RES/perf" ;;
    throughput) step throughput 130 python3 -m benchmarks throughput --repeats 1 --out "$RES" --suffix=-gpu ;;
    distributed) step distributed 150 python3 benchmarks/gpu_distributed.py --out "$RES" ;;
    parallel) step parallel 300 python3 benchmarks/gpu_parallel.py --out "$RES" --model gpt2 ;;
    monitoring) step monitoring 110 python3 benchmarks/gpu_monitoring.py --steps 30 --out "$RES/monitoring" ;;
    data) step data 45 python3 benchmarks/gpu_data.py --out "$RES" ;;
    checkpoint) step checkpoint 150 python3 -m benchmarks checkpoint --out "$RES" --suffix=-gpu ;;
    checkpoint-sharded) step checkpoint-sharded 240 python3 benchmarks/gpu_checkpoint.py --out "$RES" ;;
    sliding) step sliding 150 python3 benchmarks/gpu_architecture.py --parts attention --out "$RES" ;;
    architecture) step architecture 360 python3 benchmarks/gpu_architecture.py --out "$RES" ;;
    transfer) step transfer 360 python3 benchmarks/gpu_transfer.py --out "$RES/transfer" ;;
    pytest) step pytest 70 python3 -m pytest -q -p no:cacheprovider tests/test_gpu_foundation.py tests/test_hardware.py ;;
    *) echo "unknown step $s" ;;
  esac
done
echo "=== summary"; printf '%s\n' "${summary[@]}" | tee "$RES/summary.txt"
cp "$RES/summary.txt" "$OUT/summary.txt"
tar czf "$OUT/results.tgz" -C "$RES" .
