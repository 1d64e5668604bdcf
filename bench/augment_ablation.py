"""Ablation of the augmentation and network options on one dataset, each case one training.

Each case is ``tomoseg train`` with the default configuration plus the case's options, a fixed
number of epochs and one seed, then ``tomoseg evaluate`` on the test split (the run's tuned
decision applied); the table gives the test IoU / BF1 of the class of interest, the training
wall time and the crops per second of the last epoch. Cases run one at a time (``--case``), so
each can start as soon as it is wanted; ``--table`` prints the table of the cases finished::

    PYTHONPATH=src python bench/augment_ablation.py --data ../shared/data/em-vnc-mito \\
        --out runs/aug-em --epochs 12 --case default \\
        --common "--width 16 --depth 4 --crop-size 128 --crops 256 --compile off"
    ... --case intensity | spatial | elastic | resenc | resenc-ds
    PYTHONPATH=src python bench/augment_ablation.py --out runs/aug-em --table

Each case runs the ``tomoseg`` command line of the Python running this script, as a user would.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

#: the cases: the options each adds to the default configuration
CASES: dict[str, list[str]] = {
    "default": [],
    # nnU-Net's intensity transforms at its strengths (noise: 0.1 of z-scored intensities is
    # about 0.03 of tomoseg's percentile-normalised ones on em-vnc-mito)
    "intensity": [
        "--aug-brightness",
        "0.25",
        "--aug-contrast",
        "0.25",
        "--aug-gamma",
        "0.5",
        "--aug-noise",
        "0.03",
        "--aug-blur",
        "1",
        "--aug-lowres",
        "0.5",
    ],
    # nnU-Net's scaling (0.7-1.4) and rotation with its probability 0.2; small rotations, as the
    # 90-degree turns give the rest
    "spatial": ["--aug-spatial-prob", "0.2", "--aug-scale", "0.3", "--aug-rotate", "45"],
    "elastic": [
        "--aug-spatial-prob",
        "0.2",
        "--aug-scale",
        "0.3",
        "--aug-rotate",
        "45",
        "--aug-elastic",
        "4",
    ],
    # weight averaging forced on (a run this short leaves it off): raw vs averaged curves
    "ema": ["--ema-decay", "0.99"],
    "resenc": ["--model", "unet-resenc"],
    "resenc-ds": ["--model", "unet-resenc", "--deep-supervision"],
    # the residual encoder at half the width: about the U-Net's cost per step on the CPU
    "resenc-ds-half": ["--model", "unet-resenc", "--deep-supervision", "--width", "8"],
}


def tomoseg(*args: str) -> None:
    cmd = [sys.executable, "-m", "tomoseg.cli", *args]
    print("$ tomoseg " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True, env=os.environ)


def run_case(data: Path, out: Path, case: str, epochs: int, seed: int, common: list[str]) -> dict:
    d = out / case
    t0 = time.perf_counter()
    tomoseg(
        "train", "--data", str(data), "--out", str(d / "run"), "--epochs", str(epochs),
        "--seed", str(seed), "--overwrite", "--quiet", *common, *CASES[case],
    )  # fmt: skip
    minutes = (time.perf_counter() - t0) / 60
    tomoseg(
        "evaluate", str(d / "run"), "--data", str(data), "--out", str(d / "test"), "--overwrite"
    )
    m = json.loads((d / "test" / "metrics.json").read_text())
    coi = m["class_of_interest"]
    rows = list(csv.DictReader((d / "run" / "metrics.csv").open()))
    result = {
        "case": case,
        "options": " ".join(CASES[case]) or "(none)",
        "common": " ".join(common),
        "epochs": epochs,
        "seed": seed,
        "iou": m["mean"]["iou"][coi],
        "bf1": m["mean"]["bf1"][coi],
        "train_minutes": minutes,
        "crops_per_second": float(rows[-1]["crops_per_second"]),
        "val_iou_last": float(rows[-1][f"val_iou_{coi}"]),
    }
    (d / "result.json").write_text(json.dumps(result, indent=1))
    return result


def table(out: Path) -> str:
    lines = [
        "| case | options | test IoU | test BF1 | val IoU (last epoch) | training min | crops/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for case in CASES:
        f = out / case / "result.json"
        if f.is_file():
            r = json.loads(f.read_text())
            lines.append(
                f"| {case} | `{r['options']}` | {r['iou']:.3f} | {r['bf1']:.3f} | "
                f"{r['val_iou_last']:.3f} | {r['train_minutes']:.1f} | "
                f"{r['crops_per_second']:.1f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/em-vnc-mito"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--case", choices=sorted(CASES), action="append", default=[])
    ap.add_argument(
        "--common", default="", help="options of every case, e.g. '--width 16 --crop-size 128'"
    )
    ap.add_argument("--table", action="store_true", help="print the table of finished cases")
    a = ap.parse_args(argv)
    for case in a.case:
        result = run_case(a.data, a.out, case, a.epochs, a.seed, shlex.split(a.common))
        print(json.dumps(result), flush=True)
    if a.table or not a.case:
        print(table(a.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
