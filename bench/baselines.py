"""Traditional baselines on a dataset's test split: Otsu (multi-Otsu for 3+ classes) and k-means
on intensity, scored with ``tomoseg score`` into OUT/otsu and OUT/kmeans.

Class order: the thresholds/clusters, sorted by intensity, are assigned to the classes sorted by
their mean intensity on the training split (so dark mitochondria get the dark cluster).

    python bench/baselines.py DATASET OUT
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy.cluster.vq import kmeans2
from skimage.filters import threshold_multiotsu, threshold_otsu

from tomoseg.data.samples import load_split
from tomoseg.evaluation.score import score_folders
from tomoseg.io.datasets import load_dataset, split_pairs
from tomoseg.io.images import read_image
from tomoseg.io.writers import write_mask


def class_order(data: Path, k: int) -> np.ndarray:
    """Class ids sorted by their mean intensity on the training split."""
    sums, counts = np.zeros(k), np.zeros(k)
    for s in load_split(data, "train"):
        sums += np.bincount(s.mask.ravel(), weights=s.image.ravel().astype(float), minlength=k)[:k]
        counts += np.bincount(s.mask.ravel(), minlength=k)[:k]
    return np.argsort(sums / np.maximum(counts, 1))


def otsu(img: np.ndarray, order: np.ndarray) -> np.ndarray:
    k = len(order)
    th = [threshold_otsu(img)] if k == 2 else list(threshold_multiotsu(img, classes=k))
    return order[np.digitize(img, th)].astype(np.uint8)


def kmeans(img: np.ndarray, order: np.ndarray, seed: int = 0) -> np.ndarray:
    k = len(order)
    x = img.astype(np.float64).ravel()
    sample = np.random.default_rng(seed).choice(x, min(x.size, 200_000), replace=False)
    centers, _ = kmeans2(sample[:, None], k, seed=seed, minit="++")
    centers = np.sort(centers[:, 0])
    edges = (centers[1:] + centers[:-1]) / 2
    return order[np.digitize(img, edges)].astype(np.uint8)


def main(data: Path, out: Path) -> None:
    spec = load_dataset(data)
    order = class_order(data, len(spec.classes))
    k = spec.coi_index
    for name, fn in (("otsu", otsu), ("kmeans", kmeans)):
        pred = out / name / "predictions"
        for p in split_pairs(data, "test"):
            write_mask(pred / f"{p.id}.png", fn(read_image(p.image), order))
        s = score_folders(
            pred,
            data / "test" / "masks",
            out / name,
            images=data / "test" / "images",
            overwrite=True,
        )
        print(
            f"{data.name} {name}: IoU {spec.class_of_interest} {s.mean_iou[k]:.3f}, BF1 {s.mean_bf1[k]:.3f}"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
