"""A run trained on 8-bit images applied to the same images as 16-bit, float and signed data.

Writes an 8-bit copy of a phantom (its uint16 slices divided by 257, rounded), trains a small
network on it, then segments the test slices as uint8 (as trained), uint16 (x 257), float32
(/ 255) and int8 (- 128), with ``intensity`` ``warn`` (as they are) and ``rescale`` (each image's
0.5 / 99.5 percentiles mapped onto the run's), and prints the IoU of the class of interest
against the truth and the agreement (IoU of the class of interest) with the uint8 labels.

    python bench/bench_intensity.py OUT                      # phantom 192x192 x 16, seed 0
    python bench/bench_intensity.py OUT --shape 256x256 --slices 20 --epochs 20

Writes ``OUT/results.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np

from tomoseg.config.schema import load_config
from tomoseg.inference.predictor import Predictor
from tomoseg.io.datasets import split_pairs
from tomoseg.io.images import read_image, read_mask
from tomoseg.io.writers import write_image, write_json, write_mask
from tomoseg.synthetic.phantom import generate_phantom
from tomoseg.training.trainer import train

#: the same content in each type: uint8 as trained, and as a 16-bit, float or signed export
VARIANTS = {
    "uint8": lambda u8: u8,
    "uint16": lambda u8: u8.astype(np.uint16) * np.uint16(257),
    "float32": lambda u8: u8.astype(np.float32) / np.float32(255),
    "int8": lambda u8: (u8.astype(np.int16) - 128).astype(np.int8),
}


def eight_bit_copy(src: Path, dst: Path) -> None:
    """The phantom with its uint16 slices as uint8 (divided by 257, rounded)."""
    (dst / "dataset.json").parent.mkdir(parents=True, exist_ok=True)
    (dst / "dataset.json").write_bytes((src / "dataset.json").read_bytes())
    for split in ("train", "val", "test"):
        for p in split_pairs(src, split):
            u8 = np.rint(read_image(p.image) / 257.0).astype(np.uint8)
            write_image(dst / split / "images" / f"{p.id}.tif", u8)
            write_mask(dst / split / "masks" / f"{p.id}.png", read_mask(p.mask))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--shape", default="192x192")
    ap.add_argument("--slices", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    generate_phantom(a.out / "phantom", a.shape, a.slices, seed=a.seed, overwrite=True)
    data = a.out / "phantom8"
    eight_bit_copy(a.out / "phantom", data)
    cfg = {"width": 8, "depth": 3, "crop_size": 64, "crops": 128, "batch_size": 8}
    cfg.update(epochs=a.epochs, seed=a.seed, device="cpu")
    run = train(data, a.out / "run", load_config(None, cfg), overwrite=True, progress=False)
    pairs = split_pairs(data, "test")
    images = [read_image(p.image) for p in pairs]
    truth = [read_mask(p.mask) == 1 for p in pairs]
    rows, ref = [], None
    for rule in ("warn", "rescale"):
        pred = Predictor.from_run(run, device="cpu", intensity=rule)
        for name, convert in VARIANTS.items():
            t0 = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                labels = [pred.predict(convert(im)) == 1 for im in images]
            sec = (time.perf_counter() - t0) / len(images)
            if ref is None:
                ref = labels
            rows.append(
                {
                    "type": name,
                    "intensity": rule,
                    "iou_truth": iou(np.stack(labels), np.stack(truth)),
                    "agreement_uint8": iou(np.stack(labels), np.stack(ref)),
                    "coi_fraction": float(np.mean(np.stack(labels))),
                    "warnings": sum("intensity range" in str(w.message) for w in caught),
                    "seconds_per_slice": round(sec, 3),
                }
            )
    write_json(a.out / "results.json", {"args": vars(a) | {"out": str(a.out)}, "rows": rows})
    print(f"phantom {a.shape} x {a.slices} (seed {a.seed}), {len(pairs)} test slices, {run}")
    print("| type | intensity | IoU vs truth | IoU vs uint8 labels | labelled soma | warnings |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['type']} | {r['intensity']} | {r['iou_truth']:.3f} | "
            f"{r['agreement_uint8']:.3f} | {100 * r['coi_fraction']:.1f} % | {r['warnings']} |"
        )


if __name__ == "__main__":
    main()
