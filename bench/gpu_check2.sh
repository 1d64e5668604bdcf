#!/usr/bin/env bash
# Second GPU session: the final default model's inference time and the whole-stack throughput.
set -u
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
nvidia-smi -L | tee "$OUT/gpu.txt"
timeout 70 python3 bench/bench_infer.py --gpu 2>&1 | tee "$OUT/bench_infer_gpu2.txt"
timeout 90 python3 bench/bench_stack.py --gpu --n 40 2>&1 | tail -15 | tee "$OUT/bench_stack_gpu.txt"
