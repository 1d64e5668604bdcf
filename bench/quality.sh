#!/usr/bin/env bash
# The quality targets: train the default config on each real dataset (at most 29 minutes each on
# the CPU), evaluate on its test split, and score the Otsu / k-means baselines on the same images.
#   bash bench/quality.sh [DATA_ROOT] [OUT]      (defaults: ../shared/data runs/quality)
set -euo pipefail
ROOT=${1:-../shared/data}; OUT=${2:-runs/quality}
T=${TOMOSEG:-.venv/bin/tomoseg}; PY=${PY:-.venv/bin/python}
for ds in xct-dendrite em-vnc-mito stem-pt; do
  $PY bench/baselines.py "$ROOT/$ds" "$OUT/$ds/baselines"
  /usr/bin/time -f "$ds training wall %e s" $T train --data "$ROOT/$ds" --out "$OUT/$ds/run" --max-minutes 29 --overwrite --quiet
  $T evaluate "$OUT/$ds/run" --data "$ROOT/$ds" --out "$OUT/$ds/test" --overwrite
done
