"""Orthogonal planes on the phantom's 3D truth: xy-only against xy + xz + yz, in training
(``train --planes``) and in inference (``segment-stack --planes``), with the cost in time.

The phantom (``tomoseg phantom``: isotropic voxels, somas among look-alike vessels, 3D truth)
is generated once; two runs are trained on its ``train`` split (consecutive sections) with the
same small budget, one with ``planes=xy`` and one with ``planes=xy,xz,yz``; each segments the
whole volume with both inference settings. Scored on the ``test`` slab (slices no run trained
or tuned on) against ``truth3d/labels.tif``:

* **IoU 3D**: soma voxels, intersection over union over the slab;
* **BF1 3D**: boundary F1 of the soma class in 3D (boundary voxels: the class minus its
  6-connected erosion; matched within 2 voxels, Euclidean; MATLAB ``bfscore`` extended to 3D);
* **vessel->soma**: the share of the vessel look-alikes' voxels (the scene's vessel mask)
  labelled soma, the confusion three planes should reduce;
* **train s / segment s**: CPU time (``time.process_time``, all threads) of training and of
  ``segment_stack``: on a shared machine wall time measures the neighbours more than tomoseg.

    python bench/bench_planes.py OUT                      # 128^3 phantom, ~25 min on 2 cores
    python bench/bench_planes.py OUT --size 64 --crops 64 --epochs 1   # a smoke test

CPU shared: the ratios (three planes over xy) are measured in the same run on the same machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
from scipy import ndimage

import tomoseg
from tomoseg.inference.predictor import Predictor
from tomoseg.inference.stack import segment_stack
from tomoseg.io.images import read_image
from tomoseg.synthetic.phantom import PhantomScene, generate_phantom, slice_id


def _volume(root: Path, nz: int) -> np.ndarray:
    """The phantom's whole image volume (Z, Y, X) uint16, from its three splits."""
    info = json.loads((root / "dataset.json").read_text())
    where = {i: s for s, ids in info["splits"].items() for i in ids}
    return np.stack(
        [read_image(root / where[slice_id(z, nz)] / "images" / f"{slice_id(z, nz)}.tif")
         for z in range(nz)]
    )  # fmt: skip


def _vessels(size: int, nz: int, seed: int, zs: list[int]) -> np.ndarray:
    """The scene's vessel mask (vessel voxels not covered by a soma) on slices ``zs``."""
    scene = PhantomScene((size, size), nz, seed)
    return np.stack([scene.render(z)[2] for z in zs])


def bf1_3d(truth: np.ndarray, pred: np.ndarray, tolerance: float = 2.0) -> float:
    """3D boundary F1 of two boolean volumes (boundaries: the mask minus its 6-connected
    erosion; a boundary voxel matches when the other boundary is closer than ``tolerance``)."""
    if not truth.any():
        return float("nan")
    if not pred.any():
        return 0.0
    bt = truth & ~ndimage.binary_erosion(truth)
    bp = pred & ~ndimage.binary_erosion(pred)
    dt = ndimage.distance_transform_edt(~bt)
    dp = ndimage.distance_transform_edt(~bp)
    precision = float((dt[bp] < tolerance).mean())
    recall = float((dp[bt] < tolerance).mean())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def _score(labels: np.ndarray, truth: np.ndarray, vessels: np.ndarray) -> dict[str, float]:
    soma, true = labels == 1, truth > 0
    union = np.count_nonzero(soma | true)
    return {
        "iou": np.count_nonzero(soma & true) / union if union else float("nan"),
        "bf1": bf1_3d(true, soma),
        "vessel_as_soma": float(soma[vessels].mean()) if vessels.any() else float("nan"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--size", type=int, default=128, help="phantom side and slices (a cube)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--crops", type=int, default=400)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--crop-size", type=int, default=64)
    ap.add_argument("--width", type=int, default=16, help="channels of the first level")
    ap.add_argument(
        "--train-planes", action="append", help="the arms to train (default: xy and xy,xz,yz)"
    )
    ap.add_argument("--phantom", type=Path, help="an existing phantom (default: OUT/phantom)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    out: Path = a.out
    out.mkdir(parents=True, exist_ok=True)
    data = a.phantom or out / "phantom"
    n = a.size
    if not (data / "dataset.json").is_file():
        generate_phantom(data, shape=(n, n), slices=n, seed=a.seed, overwrite=True)
    info = json.loads((data / "dataset.json").read_text())
    test = [int(i[1:]) for i in info["splits"]["test"]]
    volume = _volume(data, n)
    truth = tifffile.imread(data / "truth3d" / "labels.tif")[test]
    vessels = _vessels(n, n, a.seed, test)
    train = {
        "crop_size": a.crop_size, "crops": a.crops, "epochs": a.epochs, "batch_size": 8,
        "width": a.width, "depth": 4, "seed": a.seed, "compile": "off", "device": "cpu",
    }  # fmt: skip
    rows = []
    for tplanes in a.train_planes or ("xy", "xy,xz,yz"):
        run_dir = out / f"run_{tplanes.replace(',', '_')}"
        t0 = time.process_time()
        tomoseg.train(data, run_dir, overwrite=True, planes=tplanes, **train)
        t_train = time.process_time() - t0
        p = Predictor.from_run(run_dir, device="cpu")
        p.predict(volume[0])  # warm-up: the first call builds the model's kernels
        for iplanes in ("xy", "xy,xz,yz"):
            seg = out / f"seg_{tplanes}_{iplanes}".replace(",", "_")
            t0 = time.process_time()
            segment_stack(p, volume, seg, planes=iplanes, voxel_size=(1, 1, 1), overwrite=True)
            t_seg = time.process_time() - t0
            import zarr

            labels = zarr.open_array(str(seg / "labels.zarr" / "0"), mode="r")[:][test]
            rows.append(
                {"train": tplanes, "infer": iplanes, **_score(labels, truth, vessels),
                 "train_s": t_train, "segment_s": t_seg}
            )  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    assert not any(np.isnan(r["iou"]) for r in rows)
    print(f"\nphantom {n}^3 (seed {a.seed}), test slab z {test[0]}-{test[-1]}, "
          f"{a.crops} crops x {a.epochs} epochs of {a.crop_size}, width {a.width}, "
          f"torch threads {a.threads}")  # fmt: skip
    print("| train planes | segment planes | soma IoU 3D | soma BF1 3D | vessel->soma "
          "| train CPU s | segment CPU s (x xy of the same run) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        base = next(b for b in rows if b["train"] == r["train"] and b["infer"] == "xy")
        print(
            f"| {r['train']} | {r['infer']} | {r['iou']:.3f} | {r['bf1']:.3f} | "
            f"{100 * r['vessel_as_soma']:.2f} % | {r['train_s']:.0f} | "
            f"{r['segment_s']:.1f} ({r['segment_s'] / base['segment_s']:.1f}x) |"
        )
    (out / "results.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
