#!/usr/bin/env bash
# Every GPU check and benchmark of the kit in one run (about 6 minutes on one H100/H200).
# Usage, from the repository root on a CUDA machine: OUT=/some/dir bash benchmarks/gpu_suite.sh
# Wheels the GPU image lacks (deepspeed and its needs) may be put in .whl/; they are installed to /tmp/site.
# Each step is time-boxed and the suite goes on past a failing step; a summary line per step ends the log.
set -u
OUT=${OUT:-/tmp/kit-gpu-out}
mkdir -p "$OUT"
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
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)" | tee -a "$OUT/gpu.txt"
summary=()
step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "=== $name (limit ${limit}s)"
  timeout "$limit" "$@" > >(tee "$OUT/$name.log") 2>&1
  local rc=$?
  summary+=("$name rc=$rc $((SECONDS - t0))s")
}
step throughput 240 python3 -m benchmarks throughput --out "$OUT" --suffix -gpu
[ -f benchmarks/gpu_distributed.py ] && step distributed 200 python3 benchmarks/gpu_distributed.py --out "$OUT"
[ -f benchmarks/gpu_monitoring.py ] && step monitoring 120 python3 benchmarks/gpu_monitoring.py --out "$OUT"
step pytest_gpu 120 python3 -m pytest -q -m gpu -p no:cacheprovider tests
echo "=== summary"; printf '%s\n' "${summary[@]}" | tee "$OUT/summary.txt"
