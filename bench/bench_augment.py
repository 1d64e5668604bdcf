"""CPU cost of the augmentation options: crops per second of cutting nothing, augmenting only
(one thread, as one data-loader worker), for 256 px crops of a random image and mask.

    PYTHONPATH=src python bench/bench_augment.py [--crops 200] [--size 256]
"""

from __future__ import annotations

import argparse
import time

import torch

from tomoseg.data.augment import augment, build_augmentation

NNUNET_INTENSITY = {
    "brightness": 0.25,
    "contrast": 0.25,
    "gamma": 0.5,
    "noise": 0.03,
    "blur": 1.0,
    "lowres": 0.5,
}
SPATIAL = {"spatial_prob": 0.2, "scale": 0.3, "rotate": 45.0}
SETTINGS = {
    "default (flips, 90-degree turns)": {},
    "+ intensity (nnU-Net's six)": NNUNET_INTENSITY,
    "+ spatial (p 0.2: scale 0.3, rotate 45)": SPATIAL,
    "+ spatial with elastic 4 px": {**SPATIAL, "elastic": 4.0},
    "+ intensity + spatial": {**NNUNET_INTENSITY, **SPATIAL},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--crops", type=int, default=200)
    ap.add_argument("--size", type=int, default=256)
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    image = torch.rand(1, a.size, a.size)
    sample = {"image": image, "mask": (image > 0.5).long()}
    print(f"augmentation alone, {a.crops} crops of {a.size} px, 1 thread")
    for name, kw in SETTINGS.items():
        t = build_augmentation(**kw)
        augment(sample, t, 0)  # warm-up
        t0 = time.perf_counter()
        for i in range(a.crops):
            augment(sample, t, i)
        print(f"  {name:45s} {a.crops / (time.perf_counter() - t0):8.0f} crops/s")


if __name__ == "__main__":
    main()
