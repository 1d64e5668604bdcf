"""Test IoU of a trained run's class of interest with larger inference tiles (256/512/1024 px).

Segments the test split of a dataset with the run's decision at several tile sizes and prints
the mean IoU over test images per tile size (docs/training.md section 4 measured em-vnc-mito):

    PYTHONPATH=src python bench/tile_sizes.py RUN ../shared/data/em-vnc-mito
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import tomoseg
from tomoseg.io.images import read_image, read_mask


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("data", type=Path)
    ap.add_argument("--tiles", default="256,512,1024")
    a = ap.parse_args()
    images = sorted((a.data / "test" / "images").iterdir())
    for tile in (int(t) for t in a.tiles.split(",")):
        p = tomoseg.Predictor.from_run(a.run, tile_size=tile)
        coi = p.classes[-1] if len(p.classes) == 2 else None
        ious = []
        for f in images:
            truth = read_mask(next((a.data / "test" / "masks").glob(f"{f.stem}.*")))
            s = tomoseg.score(truth, p.predict(read_image(f)), classes=p.classes)
            ious.append(s["mean"]["iou"])
        names = [coi] if coi else p.classes
        print(tile, {c: round(float(np.nanmean([d[c] for d in ious])), 4) for c in names})


if __name__ == "__main__":
    main()
