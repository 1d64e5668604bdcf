#!/usr/bin/env bash
# The quality targets: train the default config on each real dataset (its default schedule: a
# 20-minute time budget, the probe fits the whole schedule into it; BUDGET=M for another), evaluate on its test split (the tuned decision
# applied, and --tta TTA, default none; then again with --tta flips for TTA's gain and cost), and
# score the Otsu / k-means baselines on the same images. SEEDS="0 1 2" trains one run per seed
# (OUT/DATASET/seed-S/...) and prints the mean and spread over seeds (bench/seed_table.py).
#   bash bench/quality.sh [DATA_ROOT] [OUT] [DATASETS...]
#   (defaults: ../shared/data runs/quality xct-dendrite em-vnc-mito stem-pt; env TTA, BUDGET, SEEDS)
set -euo pipefail
ROOT=${1:-../shared/data}; OUT=${2:-runs/quality}; shift $(( $# > 2 ? 2 : $# ))
SETS=("$@"); [ ${#SETS[@]} -eq 0 ] && SETS=(xct-dendrite em-vnc-mito stem-pt)
T=${TOMOSEG:-.venv/bin/tomoseg}; PY=${PY:-.venv/bin/python}
for ds in "${SETS[@]}"; do
  $PY bench/baselines.py "$ROOT/$ds" "$OUT/$ds/baselines"
  reports=()
  for s in ${SEEDS:-0}; do
    D="$OUT/$ds"; [ -n "${SEEDS:-}" ] && D="$OUT/$ds/seed-$s"
    /usr/bin/time -f "$ds seed $s training wall %e s" $T train --data "$ROOT/$ds" --out "$D/run" ${BUDGET:+--time-budget "$BUDGET"} --seed "$s" --overwrite --quiet
    /usr/bin/time -f "$ds seed $s evaluate (tta ${TTA:-none}) wall %e s" $T evaluate "$D/run" --data "$ROOT/$ds" --out "$D/test" --tta "${TTA:-none}" --overwrite
    /usr/bin/time -f "$ds seed $s evaluate (tta flips) wall %e s" $T evaluate "$D/run" --data "$ROOT/$ds" --out "$D/test-tta-flips" --tta flips --overwrite
    reports+=("$D/test")
  done
  (IFS=,; $PY bench/seed_table.py "$ds=${reports[*]}")
done
