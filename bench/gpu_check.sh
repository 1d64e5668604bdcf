#!/usr/bin/env bash
# The prepared GPU session (device tool): GPU benchmarks, then a config exploration on the real
# datasets copied to .gpudata/. Everything it measures goes to $OUT (and bench/results/).
#   SMALL=1 bash bench/gpu_check.sh   # a seconds-long dry run of the same steps on CPU
set -u
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
if [ -d .whl ] && [ -z "${SMALL:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src
fi
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
PY=${PY:-python3}
nvidia-smi -L 2>/dev/null | tee "$OUT/gpu.txt"
$PY -c "import tomoseg.training.trainer, torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" || exit 1
G=--gpu; DEV=gpu; W=12; PLAN="em-vnc-mito:d5,dice,noweight,wide,c128,base xct-dendrite:d5,dice stem-pt:d5,dice"; DL=300; MM=1.3; C1=1024; C2=512
if [ -n "${SMALL:-}" ]; then G=; DEV=cpu; W=0; PLAN="xct-dendrite:tiny"; DL=5; MM=0.2; C1=32; C2=16; fi
timeout 150 $PY bench/bench_infer.py $G 2>&1 | tee "$OUT/bench_infer_gpu.txt"
timeout 80 $PY bench/bench_train.py $G --workers $W --data .gpudata/xct-dendrite --crop-size 256 --crops $C1 --batch-size 32 2>&1 | tail -4 | tee "$OUT/bench_train_gpu.txt"
timeout 80 $PY bench/bench_train.py $G --workers $W --model segnet --data .gpudata/xct-dendrite --crop-size 224 --crops $C2 --batch-size 16 2>&1 | tail -4 | tee -a "$OUT/bench_train_gpu.txt"
timeout 420 $PY bench/explore_configs.py --data-root .gpudata --out "$OUT/explore_gpu.csv" --device $DEV --workers $W \
  --deadline $DL --max-minutes $MM --plan $PLAN 2>&1 | grep -v -i warn | tee "$OUT/explore.log"
echo "gpu_check done"
