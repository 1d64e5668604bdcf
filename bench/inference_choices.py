"""Test IoU / BF1 of runs' class of interest under inference choices: tile size and weights.

For each run, each ``--which`` (``best``: the epoch of highest validation IoU; ``last``: the end
of the schedule; commands load the one the run's ``weights`` setting names) and each ``--tiles``
size, segments the test split of one dataset and prints the mean over test images.
``--no-decision`` leaves out the decision tuned on validation (tuned on one of the two weights,
it is not applied to the other). docs/training.md sections 4 and 7 measured em-vnc-mito:

    PYTHONPATH=src python bench/inference_choices.py ../shared/data/em-vnc-mito RUN --tiles 256,512,1024
    PYTHONPATH=src python bench/inference_choices.py ../shared/data/em-vnc-mito RUN... \\
        --which best,last --no-decision
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np

import tomoseg
from tomoseg.io.images import read_image, read_mask


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--tiles", default="0", help="tile sides in px (0 = the run's)")
    ap.add_argument("--which", default="best", help="best, last or both: best,last")
    ap.add_argument("--no-decision", action="store_true")
    a = ap.parse_args()
    images = sorted((a.data / "test" / "images").iterdir())
    warnings.simplefilter("ignore")
    for run in a.runs:
        for which in a.which.split(","):
            for tile in (int(t) for t in a.tiles.split(",")):
                p = tomoseg.Predictor.from_run(
                    run, weights=which, postprocess=not a.no_decision, tile_size=tile or None
                )
                coi = p.class_of_interest
                scores = []
                for f in images:
                    truth = read_mask(next((a.data / "test" / "masks").glob(f"{f.stem}.*")))
                    s = tomoseg.score(truth, p.predict(read_image(f)), classes=p.classes)
                    scores.append((s["mean"]["iou"][coi], s["mean"]["bf1"][coi]))
                iou, bf1 = np.nanmean(np.array(scores, float), axis=0)
                print(f"{run} {which} tile {tile or 'run'}: {coi} IoU {iou:.4f} BF1 {bf1:.4f}")


if __name__ == "__main__":
    main()
