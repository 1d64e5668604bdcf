"""Compare training configurations on datasets: train each (dataset, config) pair, evaluate it
on the test split, append one row per pair to a CSV. Used to choose tomoseg's default config
(docs/training.md); runs on CPU or GPU.

    python bench/explore_configs.py --data-root ../shared/data --out results.csv \
        --plan em-vnc-mito:base,d5,dice --device gpu --deadline 500
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

from tomoseg.config.schema import load_config

# Each candidate: overrides of TrainConfig. Epoch counts are sized so that a run fits about
# 25 minutes on the 2-core CPU (measured throughputs in docs/training.md).
CANDIDATES: dict[str, dict] = {
    "base": {"width": 16, "depth": 4, "crop_size": 256, "crops": 500, "epochs": 80},
    "d5": {"width": 16, "depth": 5, "crop_size": 256, "crops": 500, "epochs": 80},
    "dice": {
        "width": 16,
        "depth": 5,
        "crop_size": 256,
        "crops": 500,
        "epochs": 80,
        "loss": "dice_ce",
    },
    "noweight": {
        "width": 16,
        "depth": 5,
        "crop_size": 256,
        "crops": 500,
        "epochs": 80,
        "class_weights": "none",
    },
    "median": {
        "width": 16,
        "depth": 5,
        "crop_size": 256,
        "crops": 500,
        "epochs": 80,
        "class_weights": "median",
    },
    "wide": {"width": 32, "depth": 5, "crop_size": 256, "crops": 500, "epochs": 30},
    "c128": {"width": 16, "depth": 5, "crop_size": 128, "crops": 1000, "epochs": 150},
    "jitter": {
        "width": 16,
        "depth": 5,
        "crop_size": 256,
        "crops": 500,
        "epochs": 80,
        "intensity_jitter": 0.1,
    },
    "tiny": {"width": 4, "depth": 3, "crop_size": 64, "crops": 32, "epochs": 2},
}


def main() -> None:
    from tomoseg.inference.evaluate import evaluate_run
    from tomoseg.inference.predictor import InferenceSettings
    from tomoseg.training.trainer import train

    ap = argparse.ArgumentParser()
    ap.add_argument("--data-root", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--plan", nargs="+", required=True, help="dataset:cfg1,cfg2 ...")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--deadline", type=float, default=1e9, help="seconds; start no run after it")
    ap.add_argument("--val-every", type=int, default=0, help="0 = only at the end")
    ap.add_argument("--max-minutes", type=float, default=None, help="wall-time cap per run")
    args = ap.parse_args()
    t_start = time.time()
    tmp = Path(tempfile.mkdtemp())
    new = not args.out.exists()
    with args.out.open("a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(
                [
                    "dataset",
                    "config",
                    "coi",
                    "test_iou",
                    "test_bf1",
                    "test_accuracy",
                    "epochs",
                    "train_seconds",
                    "crops_per_second",
                    "device",
                    "overrides",
                ]
            )
        for item in args.plan:
            ds, names = item.split(":")
            for name in names.split(","):
                if time.time() - t_start > args.deadline:
                    print(f"deadline reached, skipping {ds}:{name}", flush=True)
                    continue
                over = dict(CANDIDATES[name], device=args.device, workers=args.workers)
                over["max_minutes"] = args.max_minutes
                over["val_every"] = args.val_every or over["epochs"]
                cfg = load_config(None, over)
                t0 = time.time()
                run = train(args.data_root / ds, tmp / f"{ds}-{name}", cfg, progress=False)
                secs = time.time() - t0
                summ, _ = evaluate_run(
                    run,
                    args.data_root / ds,
                    tmp / f"{ds}-{name}-eval",
                    settings=InferenceSettings(device=args.device),
                )
                k = summ.classes.index(summ.class_of_interest)
                rows = list(csv.DictReader((run / "metrics.csv").open()))
                cps = sum(float(r["crops_per_second"]) for r in rows) / len(rows)
                w.writerow(
                    [
                        ds,
                        name,
                        summ.class_of_interest,
                        f"{summ.mean_iou[k]:.4f}",
                        f"{summ.mean_bf1[k]:.4f}",
                        f"{summ.mean_accuracy:.4f}",
                        len(rows),
                        f"{secs:.1f}",
                        f"{cps:.1f}",
                        args.device,
                        CANDIDATES[name],
                    ]
                )
                f.flush()
                print(
                    f"{ds}:{name} IoU {summ.mean_iou[k]:.3f} BF1 {summ.mean_bf1[k]:.3f} in {secs:.0f} s ({cps:.0f} crops/s)",
                    flush=True,
                )


if __name__ == "__main__":
    main()
