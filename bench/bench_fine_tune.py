"""Fine-tuning on two corrected slices: test IoU of an under-trained run before and after.

    PYTHONPATH=src python bench/bench_fine_tune.py OUT [--budget 2]

What a napari user does with the "Correct and fine-tune" widget, on the phantom of
``tomoseg demo`` (384x384, 20 slices: 14 train, 3 val, 3 test): a deliberately under-trained
run (U-Net width 16, depth 4, 2 epochs of 64 crops of 128 px) segments the training slices;
``tomoseg suggest`` picks the two to correct; they are "corrected from the truth" and the run is
fine-tuned on them (``--crops`` 32 crops an epoch) with a time budget of ``--budget`` CPU
minutes, two ways:

* ``changed``: only the pixels the correction changed are annotated (the widget's rule: the
  rest of the slice counts as unannotated);
* ``whole``: the two corrected slices are annotated everywhere (a user who checked every pixel).

Each run is scored with ``tomoseg evaluate`` on the dense test masks (slices never seen).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import tomoseg
from tomoseg.inference.evaluate import evaluate_run
from tomoseg.inference.predictor import InferenceSettings
from tomoseg.inference.suggest import suggest
from tomoseg.io.images import list_images, read_image, read_mask
from tomoseg.io.writers import write_json


def test_iou(run: Path, data: Path, out: Path) -> float:
    summary, _ = evaluate_run(
        run, data, out, settings=InferenceSettings(device="cpu"), overwrite=True
    )
    return float(summary.mean_iou[summary.classes.index(summary.class_of_interest)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--budget", type=float, default=2.0, help="fine-tune minutes")
    ap.add_argument("--crops", type=int, default=32, help="fine-tune crops per epoch")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    from tomoseg.experiments.demo import DEMO_SHAPE, DEMO_SLICES
    from tomoseg.synthetic.phantom import generate_phantom

    data = a.out / "phantom"
    if not (data / "dataset.json").is_file():
        generate_phantom(data, DEMO_SHAPE, DEMO_SLICES, seed=0, overwrite=True)
    t0 = time.perf_counter()
    reused = (a.out / "parent" / "last.safetensors").is_file()
    parent = tomoseg.Run(a.out / "parent") if (a.out / "parent" / "last.safetensors").is_file() else tomoseg.train(
        data, a.out / "parent", width=16, depth=4, crop_size=128, crops=64, epochs=2,
        seed=a.seed, device="cpu", overwrite=True,
    )  # fmt: skip
    parent_s = None if reused else time.perf_counter() - t0
    files = sorted(list_images(data / "train" / "images").values())
    images = np.stack([read_image(f) for f in files])
    truth = np.stack([read_mask(data / "train" / "masks" / f"{f.stem}.png") for f in files])
    picked = [s["index"] for s in suggest(parent.path, images, n=2)["slices"]]
    p = tomoseg.Predictor.from_run(parent.path, device="cpu")
    preds = {z: p.predict(images[z]) for z in picked}
    rows = [{"run": "under-trained parent", "test_iou": test_iou(parent.path, data, a.out / "e0"),
             "seconds": parent_s}]  # fmt: skip
    for how in ("changed", "whole"):
        labels = [
            np.where(preds[z] != truth[z], truth[z], 255).astype(np.uint8)
            if how == "changed"
            else truth[z]
            for z in picked
        ]
        annotated = float(np.mean([(lab != 255).mean() for lab in labels]))
        t0 = time.perf_counter()
        child = tomoseg.fine_tune(
            parent.path, [images[z] for z in picked], labels, a.out / f"child_{how}",
            ignore_label=255, time_budget=a.budget, crops=a.crops, device="cpu", seed=a.seed,
            overwrite=True,
        )  # fmt: skip
        secs = time.perf_counter() - t0
        rows.append({"run": f"fine-tuned, {how}", "annotated_fraction": annotated,
                     "test_iou": test_iou(child.path, data, a.out / f"e_{how}"),
                     "seconds": secs})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    write_json(a.out / "results.json", {"slices": [files[z].stem for z in picked], "rows": rows})
    print(f"\ncorrected slices: {[files[z].stem for z in picked]} (chosen by tomoseg suggest)")
    print("| run | annotated pixels of the 2 slices | test IoU soma | seconds |")
    print("|---|---|---|---|")
    for r in rows:
        frac = f"{100 * r['annotated_fraction']:.1f} %" if "annotated_fraction" in r else "-"
        secs = "-" if r["seconds"] is None else f"{r['seconds']:.0f}"
        print(f"| {r['run']} | {frac} | {r['test_iou']:.3f} | {secs} |")


if __name__ == "__main__":
    main()
