"""Touching somas told apart: ``objects --split`` against plain connected components.

On phantoms whose somas are partly placed in clusters of 2-3 touching somas (``phantom
--touching FRACTION``), objects are made from the soma class mask of the 3D truth (and, with
``--network``, from a small network's segmentation of the phantom) in two ways:

* ``components``: 26-connected components (``tomoseg objects``);
* ``split``: the same, then the seeded watershed of ``tomoseg objects --split`` (defaults, and
  other seed heights ``h`` as fractions of the typical soma radius with ``--h-fractions``);

and compared with the true soma instances: the count error, the count error among the somas
that touch another one (predicted objects whose largest overlap is such a soma, against their
number), and detection precision / recall / F1 with one-to-one matching at IoU >= 0.5 and at
IoU >= 0.75 (the strict matching of the MitoEM challenge's AP-75; with no confidence score per
object, F1 at 0.75 stands in for it). The split is also run through ``analyze_objects`` slab by
slab (``--chunk`` slices) and checked to give the same objects as the in-memory run.

    python bench/bench_split.py OUT                          # 3 seeds, 256x256x64, touching 0.5
    python bench/bench_split.py OUT --seeds 0 --slices 32    # a smoke test
    python bench/bench_split.py OUT --network                # also on a trained network's labels

Prints one table per source (mean over seeds, and each seed) and writes ``OUT/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
import tifffile

from tomoseg.evaluation.objects import (
    analyze_objects,
    detection_scores,
    label_objects,
    split_labels,
)
from tomoseg.evaluation.split import H_FRACTION, MIN_DISTANCE_FRACTION, typical_radius
from tomoseg.synthetic.phantom import generate_phantom


def overlaps(pred: np.ndarray, truth: np.ndarray) -> tuple[dict, dict, dict]:
    """(pairs, predicted sizes, true sizes) of two instance label volumes."""
    both = (pred > 0) & (truth > 0)
    keys = (pred[both].astype(np.int64) << 32) | truth[both].astype(np.int64)
    u, c = np.unique(keys, return_counts=True)
    pairs = {(int(k >> 32), int(k & 0xFFFFFFFF)): int(n) for k, n in zip(u, c, strict=True)}
    ps = np.bincount(pred.ravel())
    ts = np.bincount(truth.ravel())
    return (
        pairs,
        {i: int(n) for i, n in enumerate(ps) if i and n},
        {i: int(n) for i, n in enumerate(ts) if i and n},
    )


def interior(truth: np.ndarray) -> set[int]:
    """True objects that do not reach the volume's border (not cut by it)."""
    from scipy import ndimage

    shape = truth.shape
    return {
        k + 1
        for k, b in enumerate(ndimage.find_objects(truth))
        if b is not None and all(s.start > 0 and s.stop < n for s, n in zip(b, shape, strict=True))
    }


def score(pred: np.ndarray, truth: np.ndarray, touching: set[int], inside: set[int]) -> dict:
    """Count errors and detection scores of predicted instances against the true ones."""
    pairs, ps, ts = overlaps(pred, truth)
    d50 = detection_scores(pairs, ps, ts)
    d75 = detection_scores(pairs, ps, ts, threshold=0.75)
    best: dict[int, tuple[int, int]] = {}
    for (p, t), n in pairs.items():
        if n > best.get(p, (0, 0))[0]:
            best[p] = (n, t)

    def count_error(group: set[int]) -> float | None:
        on = sum(1 for _, t in best.values() if t in group)
        return on / len(group) - 1 if group else None

    return {
        "objects": len(ps),
        "true": len(ts),
        "count_error": d50["count_relative_error"],
        "touching_count_error": count_error(touching),
        "interior_touching_count_error": count_error(touching & inside),
        "precision_50": d50["precision"],
        "recall_50": d50["recall"],
        "f1_50": d50["f1"],
        "precision_75": d75["precision"],
        "recall_75": d75["recall"],
        "f1_75": d75["f1"],
    }


def network_labels(ph: Path, work: Path, epochs: int, crops: int) -> np.ndarray:
    """Soma class of a small network trained on the phantom's train split, every slice."""
    from tomoseg.api import segment_stack
    from tomoseg.config.schema import load_config
    from tomoseg.training.trainer import train

    cfg = {"width": 8, "depth": 3, "crop_size": 64, "crops": crops, "epochs": epochs,
           "batch_size": 8}  # fmt: skip
    run = train(ph, work / "run", load_config(None, cfg), progress=False)
    spec = json.loads((ph / "dataset.json").read_text())
    slices = work / "slices"
    slices.mkdir(exist_ok=True)
    for split, ids in spec["splits"].items():
        for i in ids:
            link = slices / f"{i}.tif"
            if not link.exists():
                link.symlink_to(ph / split / "images" / f"{i}.tif")
    segment_stack(run, slices, work / "seg", device="auto", overwrite=True)
    import zarr

    g = zarr.open_group(str(work / "seg" / "labels.zarr"), mode="r")
    return np.asarray(g["0"][:]) == 1


def one_seed(args: argparse.Namespace, seed: int) -> dict:
    ph = args.out / f"phantom_{seed}"
    info = generate_phantom(
        ph, (args.size, args.size), args.slices, seed=seed, overwrite=True,
        params={"touching": args.touching},
    )  # fmt: skip
    truth = tifffile.imread(ph / "truth3d" / "labels.tif")
    objs = json.loads((ph / "truth3d" / "objects.json").read_text())["objects"]
    touching = {o["label"] for o in objs if o.get("touching")}
    inside = interior(truth)
    sources = {"truth mask": truth > 0}
    if args.network:
        t0 = time.perf_counter()
        sources["network"] = network_labels(
            ph, args.out / f"net_{seed}", args.net_epochs, args.net_crops
        )
        print(f"seed {seed}: network trained and applied in {time.perf_counter() - t0:.0f} s")
    res: dict = {
        "seed": seed, "somas": info["somas"], "touching": len(touching),
        "interior_touching": len(touching & inside), "sources": {},
    }  # fmt: skip
    for name, mask in sources.items():
        rows = {}
        t0 = time.perf_counter()
        cc = label_objects(mask.astype(np.uint8))
        rows["components"] = {
            **score(cc, truth, touching, inside),
            "seconds": time.perf_counter() - t0,
        }
        r = typical_radius(np.bincount(cc.ravel())[1:], (1.0, 1.0, 1.0)) or 1.0
        for f in sorted({H_FRACTION, *args.h_fractions}):
            t0 = time.perf_counter()
            sp = split_labels(cc, split_h=f * r, split_min_distance=MIN_DISTANCE_FRACTION * r)
            key = "split" if f == H_FRACTION else f"split h={f:g}r"
            rows[key] = {**score(sp, truth, touching, inside), "seconds": time.perf_counter() - t0}
            rows[key]["mvoxels"] = float(mask.sum()) / 1e6
            if f == H_FRACTION:
                default = sp
        t0 = time.perf_counter()
        s = analyze_objects(
            mask.astype(np.uint8), args.out / f"objects_{seed}_{name.replace(' ', '_')}",
            split=True, chunk_slices=args.chunk, meshes=0, overwrite=True,
        )  # fmt: skip
        import zarr

        chunked = np.asarray(
            zarr.open_group(
                str(args.out / f"objects_{seed}_{name.replace(' ', '_')}" / "objects.zarr"),
                mode="r",
            )["0"][:]
        )  # noqa: E501
        rows["split"]["chunked_equals_in_memory"] = bool(np.array_equal(chunked, default))
        rows["split"]["chunked_seconds"] = time.perf_counter() - t0
        rows["split"]["h"], rows["split"]["min_distance"] = (
            s["split"]["h"],
            s["split"]["min_distance"],
        )
        res["sources"][name] = rows
    return res


SHORT = {
    "count_error": "count error",
    "touching_count_error": "touching somas",
    "interior_touching_count_error": "touching, inside",
    "precision_50": "P@0.5",
    "recall_50": "R@0.5",
    "f1_50": "F1@0.5",
    "precision_75": "P@0.75",
    "recall_75": "R@0.75",
    "f1_75": "F1@0.75",
}


def show(results: list[dict]) -> None:
    names = list(results[0]["sources"])
    cols = ["count_error", "touching_count_error", "interior_touching_count_error", "precision_50", "recall_50", "f1_50",
            "precision_75", "recall_75", "f1_75"]  # fmt: skip
    for name in names:
        print(f"\n{name}: mean over seeds {[r['seed'] for r in results]}")
        print("| method | " + " | ".join(SHORT[c] for c in cols) + " | s |")
        print("|---" * (len(cols) + 2) + "|")
        for method in results[0]["sources"][name]:
            vals = [np.mean([r["sources"][name][method][c] for r in results]) for c in cols]
            sec = np.mean([r["sources"][name][method]["seconds"] for r in results])
            cells = [
                f"{v:+.1%}" if "count" in c else f"{v:.3f}" for c, v in zip(cols, vals, strict=True)
            ]  # noqa: E501
            print(f"| {method} | " + " | ".join(cells) + f" | {sec:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--slices", type=int, default=64)
    ap.add_argument("--touching", type=float, default=0.5)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--h-fractions", type=float, nargs="*", default=[0.1, 0.4])
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--network", action="store_true")
    ap.add_argument("--net-epochs", type=int, default=20)
    ap.add_argument("--net-crops", type=int, default=256)
    args = ap.parse_args()
    warnings.filterwarnings("ignore", "the volume records no voxel size")  # a phantom: voxels
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"CPU: {os.cpu_count()} cores (shared); phantom {args.size}x{args.size}x{args.slices}, "
          f"touching {args.touching}")  # fmt: skip
    results = [one_seed(args, s) for s in args.seeds]
    for r in results:
        print(f"seed {r['seed']}: {r['somas']} somas, {r['touching']} touching another one "
              f"({r['interior_touching']} not cut by the border); "
              f"chunked = in-memory: {[r['sources'][n]['split']['chunked_equals_in_memory'] for n in r['sources']]}")  # noqa: E501  # fmt: skip
    show(results)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    per = [r["sources"][n]["split"]["seconds"] / r["sources"][n]["split"]["mvoxels"]
           for r in results for n in r["sources"]]  # fmt: skip
    full = 1800 * 1920 * 2300 * 0.06 / 1e6  # the seed volume, 6 % of it somas
    print(f"\nsplit: {np.mean(per):.2f} s per million object voxels (in memory, this CPU); a "
          f"1800x1920x2300 volume with 6 % somas ({full:.0f} Mvoxels of objects) projects to "
          f"{np.mean(per) * full / 60:.0f} min")  # fmt: skip


if __name__ == "__main__":
    main()
