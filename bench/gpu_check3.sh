#!/usr/bin/env bash
# GPU session for issue 14 item 2 (segment-stack io_workers): what the CPU side of this machine
# can feed, then 1800 slices of 2300x1920 end to end on the GPU. About 4.5 minutes (timeouts
# bound it to 5); everything goes to $OUT (copy to bench/results/gpu/).
#   bash bench/gpu_check3.sh              # on an H100/H200 machine (device tool)
#   SMALL=1 bash bench/gpu_check3.sh      # a dry run of the same steps on CPU, tiny slices
set -u
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
if [ -d .whl ] && [ -z "${SMALL:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src
fi
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
PY=${PY:-python3}
TMP=${TMP_BENCH:-/tmp}
{ nvidia-smi -L 2>/dev/null; echo "cores: $(nproc)"; } | tee "$OUT/gpu3.txt"
G=--gpu; N=200; NF=1800; SHAPE=1920x2300; W=32
if [ -n "${SMALL:-}" ]; then G=; N=8; NF=16; SHAPE=64x80; W=4; fi
B="$PY bench/bench_stack.py --shape $SHAPE --width $W --tmp $TMP"
keep() { grep -v -E '^( |\[|\])' | tee -a "$1"; }
# 1. the CPU-side ceiling (network replaced by a threshold): threads vs 4 and 8 processes (~35 s)
timeout 70 $B --io-only --n $N --io-workers 0 4 8 2>&1 | keep "$OUT/bench_stack_io_gpu.txt"
# 2. the network on the GPU, 200 slices, 4 slices per forward pass: threads vs 4 processes (~50 s)
timeout 75 $B $G --n $N --predict-n 5 --io-workers 0 4 --batch-slices 4 2>&1 | keep "$OUT/bench_stack_gpu3.txt"
# 3. the goal: 1800 slices end to end (<= 90 s, 20 slices/s) with the default io_workers (~150 s,
#    of which about 50 s make the 16 GB of input slices)
timeout 150 $B $G --n $NF --predict-n 2 --io-workers auto --batch-slices 4 2>&1 | keep "$OUT/bench_stack_gpu_1800.txt"
echo "gpu_check3 done"
