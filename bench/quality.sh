#!/usr/bin/env bash
# The quality targets: train the default config on each real dataset with a 20-minute time budget
# (the probe fits the whole schedule into it), evaluate on its test split (the tuned decision
# applied, and --tta TTA, default none; then again with --tta flips for TTA's gain and cost), and
# score the Otsu / k-means baselines on the same images.
#   bash bench/quality.sh [DATA_ROOT] [OUT] [DATASETS...]
#   (defaults: ../shared/data runs/quality xct-dendrite em-vnc-mito stem-pt; env TTA, BUDGET)
set -euo pipefail
ROOT=${1:-../shared/data}; OUT=${2:-runs/quality}; shift $(( $# > 2 ? 2 : $# ))
SETS=("$@"); [ ${#SETS[@]} -eq 0 ] && SETS=(xct-dendrite em-vnc-mito stem-pt)
T=${TOMOSEG:-.venv/bin/tomoseg}; PY=${PY:-.venv/bin/python}
for ds in "${SETS[@]}"; do
  $PY bench/baselines.py "$ROOT/$ds" "$OUT/$ds/baselines"
  /usr/bin/time -f "$ds training wall %e s" $T train --data "$ROOT/$ds" --out "$OUT/$ds/run" --time-budget "${BUDGET:-20}" --overwrite --quiet
  /usr/bin/time -f "$ds evaluate (tta ${TTA:-none}) wall %e s" $T evaluate "$OUT/$ds/run" --data "$ROOT/$ds" --out "$OUT/$ds/test" --tta "${TTA:-none}" --overwrite
  /usr/bin/time -f "$ds evaluate (tta flips) wall %e s" $T evaluate "$OUT/$ds/run" --data "$ROOT/$ds" --out "$OUT/$ds/test-tta-flips" --tta flips --overwrite
done
