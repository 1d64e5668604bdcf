"""Partial labels: how much does training on a fraction of each slice cost?

Makes sparse copies of a dataset whose training (and validation) masks keep only horizontal
stripes (``fraction`` of each period of rows annotated, the rest 255 = not annotated,
``"ignore_label": 255`` in dataset.json), trains the same network on the dense masks and on each
sparse copy, and scores every run on the dense test masks (``tomoseg evaluate``).

    python bench/bench_partial_labels.py OUT                      # phantom 384x384 x 20 slices
    python bench/bench_partial_labels.py OUT --data /work/shared/data/xct-dendrite --epochs 4

Writes ``OUT/results.json`` and prints a Markdown table (docs/partial_labels.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from tomoseg.config.schema import load_config
from tomoseg.inference.evaluate import evaluate_run
from tomoseg.inference.predictor import InferenceSettings
from tomoseg.io.images import list_images, read_mask
from tomoseg.io.writers import write_json, write_mask
from tomoseg.training.trainer import train


def sparse_copy(src: Path, dst: Path, fraction: float, period: int = 32) -> float:
    """Copy a dataset; in ``train`` and ``val`` masks keep the first ``round(fraction*period)``
    rows of every ``period`` rows and mark the rest 255 (not annotated).

    Returns:
        The annotated fraction of the training pixels.
    """
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    spec = json.loads((src / "dataset.json").read_text())
    write_json(dst / "dataset.json", {**spec, "ignore_label": 255})
    keep = max(1, round(fraction * period))
    kept = total = 0
    for split in ("train", "val"):
        if not (dst / split).is_dir():
            continue
        for f in list_images(dst / split / "masks").values():
            m = read_mask(f)
            rows = (np.arange(m.shape[0]) % period) < keep
            m = m.astype(np.uint8)
            m[~rows] = 255
            f.unlink()
            write_mask(f.with_suffix(".png"), m)
            if split == "train":
                kept += int(rows.sum()) * m.shape[1]
                total += m.size
    return kept / total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--data", type=Path, default=None, help="dataset (default: a phantom)")
    ap.add_argument("--fractions", default="1,0.25,0.1")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--crop-size", type=int, default=128)
    ap.add_argument("--crops", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--loss", default=None, help="ce or dice_ce (default: tomoseg's)")
    ap.add_argument(
        "--class-weights", default=None, help="inverse, median, none (default: tomoseg's)"
    )
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    data = a.data
    if data is None:
        from tomoseg.experiments.demo import DEMO_SHAPE, DEMO_SLICES
        from tomoseg.synthetic.phantom import generate_phantom

        data = a.out / "phantom"
        if not (data / "dataset.json").is_file():
            generate_phantom(data, DEMO_SHAPE, DEMO_SLICES, seed=0, overwrite=True)
    cfg = load_config(
        None,
        {
            "width": a.width,
            "depth": a.depth,
            "crop_size": a.crop_size,
            "crops": a.crops,
            "epochs": a.epochs,
            "seed": a.seed,
            "loss": a.loss,
            "class_weights": a.class_weights,
        },
    )
    rows = []
    for frac in [float(x) for x in a.fractions.split(",")]:
        name = "dense" if frac >= 1 else f"stripes{round(100 * frac)}"
        d = data if frac >= 1 else a.out / f"data_{name}"
        annotated = 1.0 if frac >= 1 else sparse_copy(data, d, frac)
        t0 = time.perf_counter()
        run = train(d, a.out / f"run_{name}", cfg, overwrite=True, progress=False)
        secs = time.perf_counter() - t0
        # always scored on the dense test masks of the original dataset
        summary, _ = evaluate_run(
            run,
            data,
            a.out / f"eval_{name}",
            settings=InferenceSettings(device="cpu"),
            overwrite=True,
        )
        k = summary.classes.index(summary.class_of_interest)
        rows.append(
            {
                "labels": name,
                "annotated_fraction": annotated,
                "test_iou": float(summary.mean_iou[k]),
                "test_bf1": float(summary.mean_bf1[k]),
                "test_accuracy": summary.mean_accuracy,
                "train_seconds": secs,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    write_json(
        a.out / "results.json",
        {"data": str(data), "config": cfg.model_dump(mode="json"), "rows": rows},
    )
    print("\n| training labels | annotated | test IoU | test BF1 | accuracy | train s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['labels']} | {100 * r['annotated_fraction']:.0f} % | {r['test_iou']:.3f} | "
            f"{r['test_bf1']:.3f} | {r['test_accuracy']:.3f} | {r['train_seconds']:.0f} |"
        )


if __name__ == "__main__":
    main()
