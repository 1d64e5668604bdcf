"""Test IoU / BF1 of runs' class of interest with their best and their last weights, no decision.

``best`` is the epoch of highest validation IoU (what every command loads), ``last`` the end of
the schedule; both without the tuned decision (it was tuned on ``best``). Reads the test split
of one dataset (docs/training.md section 7 measured em-vnc-mito):

    PYTHONPATH=src python bench/best_vs_last.py ../shared/data/em-vnc-mito RUN [RUN ...]
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

import tomoseg
from tomoseg.io.images import read_image, read_mask


def main() -> None:
    data, runs = Path(sys.argv[1]), sys.argv[2:]
    images = sorted((data / "test" / "images").iterdir())
    warnings.simplefilter("ignore")
    for run in runs:
        for which in ("best", "last"):
            p = tomoseg.Predictor.from_run(run, which=which, postprocess=False)
            coi = p.classes[-1]
            scores = []
            for f in images:
                truth = read_mask(next((data / "test" / "masks").glob(f"{f.stem}.*")))
                s = tomoseg.score(truth, p.predict(read_image(f)), classes=p.classes)
                scores.append((s["mean"]["iou"][coi], s["mean"]["bf1"][coi]))
            iou, bf1 = np.nanmean(np.array(scores, float), axis=0)
            print(f"{run} {which}: IoU {iou:.4f} BF1 {bf1:.4f}")


if __name__ == "__main__":
    main()
