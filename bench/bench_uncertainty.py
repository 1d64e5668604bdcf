"""Does a slice's uncertainty say where the network is wrong, and do the slices ``tomoseg suggest``
picks teach a run more than random ones?

    PYTHONPATH=src python bench/bench_uncertainty.py OUT [--part correlation|active|all]
        [--data-root ../shared/data] [--datasets xct-dendrite,em-vnc-mito,stem-pt]
        [--al-data em-vnc-mito] [--seeds 0,1,2] [--k 2]

Fixed settings (not time budgets, so the numbers do not depend on the machine's load): U-Net
width 8, depth 4, ``--epochs`` 4 of ``--crops`` 96 crops of 96 px, batch 16, CPU, validation
only after the last epoch (``val_every`` = the epochs), seed 0 (``--width``, ``--depth``,
``--crop-size`` change them); the decision is tuned on validation as ``train`` does. A run
already complete in ``OUT/runs`` or ``OUT/active`` is reused (delete it to train again).

1. ``correlation``: one run per dataset, trained on its ``train/`` split (validation ``val/``);
   on every ``val/`` and ``test/`` slice, the slice's uncertainty score exactly as
   :meth:`tomoseg.Predictor.predict_uncertainty` and ``tomoseg suggest`` compute it (the mean
   over the slice of the normalised entropy of the softmax the labels are decided from; the
   margin score beside it) and its error ``1 - IoU`` of the run's class of interest (and
   ``1 - mean IoU`` over all classes), from the labels of the same forward pass (what
   ``Predictor.predict`` returns). Spearman's rank correlation (:func:`scipy.stats.spearmanr`)
   over the val and test slices of each dataset, with n and the two-sided p-value.
2. ``active``: on ``--al-data``, a base run trained on ``--base`` training slices only (val and
   test as the dataset's); ``tomoseg suggest`` ranks the remaining training slices with the
   base run and picks ``--k``; the base run is fine-tuned (``train --init``) on its slices plus
   those K, for ``--ft-epochs`` epochs of ``--crops`` crops, against the same with K slices
   drawn at random among the remaining ones (``numpy.random.default_rng(seed)``), for each of
   ``--seeds`` (the seed of the fine-tune; and of the random draw). Test IoU and BF1 of the class
   of interest by ``tomoseg evaluate``, mean +- std over seeds.

Raw results: ``OUT/correlation.json`` + ``OUT/correlation.csv`` (one row per slice) and
``OUT/active.json``; the tables are printed as Markdown.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

import tomoseg
from tomoseg.inference.evaluate import evaluate_run
from tomoseg.inference.predictor import InferenceSettings, as_image, uncertainty_of
from tomoseg.inference.suggest import suggest
from tomoseg.io.images import list_images, read_image, read_mask
from tomoseg.io.writers import write_json
from tomoseg.metrics.segmentation import score_image
from tomoseg.runtime.run_record import is_complete

SPLITS = ("val", "test")


def _settings(a: argparse.Namespace) -> dict[str, Any]:
    return {
        "width": a.width,
        "depth": a.depth,
        "crop_size": a.crop_size,
        "crops": a.crops,
        "batch_size": 16,
        "device": "cpu",
    }


def _complete(run: Path) -> bool:
    f = run / "run.json"
    return f.is_file() and is_complete(json.loads(f.read_text()))


def train_once(data: Path, out: Path, **options: Any) -> tuple[tomoseg.Run, float | None]:
    """A complete run in ``out`` (reused if there is one) and the training seconds (None: reused);
    validation after the last epoch only."""
    if _complete(out):
        return tomoseg.Run(out), None
    t0 = time.perf_counter()
    options.setdefault("val_every", options["epochs"])
    run = tomoseg.train(data, out, overwrite=True, progress=False, **options)
    return run, time.perf_counter() - t0


def pairs(data: Path, split: str) -> list[tuple[str, Path, Path]]:
    """(id, image file, mask file) of a split, sorted by id."""
    images = list_images(data / split / "images")
    masks = list_images(data / split / "masks")
    return [(k, images[k], masks[k]) for k in sorted(images)]


TILE = 128


def pixel_auroc(unc: np.ndarray, wrong: np.ndarray) -> float:
    """Area under the ROC curve of the per-pixel uncertainty as a detector of wrong pixels
    (Mann-Whitney U / (n_wrong * n_right), ties counted half; NaN where all pixels are right or
    all wrong): 0.5 = no better than chance, 1 = every wrong pixel more uncertain than every
    right one."""
    from scipy.stats import rankdata

    u, w = unc.ravel(), wrong.ravel()
    n1 = int(w.sum())
    n0 = w.size - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    r = rankdata(u)[w].sum()
    return float((r - n1 * (n1 + 1) / 2) / (n1 * n0))


def tile_pairs(unc: np.ndarray, wrong: np.ndarray) -> list[tuple[float, float]]:
    """(mean uncertainty, fraction of wrong pixels) of each whole TILE x TILE tile."""
    h, w = unc.shape
    return [
        (
            float(unc[y : y + TILE, x : x + TILE].mean()),
            float(wrong[y : y + TILE, x : x + TILE].mean()),
        )
        for y in range(0, h - TILE + 1, TILE)
        for x in range(0, w - TILE + 1, TILE)
    ]


def slice_rows(
    run: Path, data: Path, dataset: str, tiles: list[tuple[float, float]] | None = None
) -> list[dict[str, Any]]:
    """One row per val/test slice: uncertainty scores and errors (and, appended to ``tiles``,
    the (uncertainty, error) of each 128 px tile)."""
    tiles = [] if tiles is None else tiles
    p = tomoseg.Predictor.from_run(run, device="cpu")
    rec = json.loads((run / "run.json").read_text())
    classes, coi = rec["classes"], rec["class_of_interest"]
    k = classes.index(coi)
    rows = []
    for split in SPLITS:
        for sid, fimg, fmask in pairs(data, split):
            image = as_image(read_image(fimg))
            truth = read_mask(fmask)
            labels, prob = p.segment(image, probabilities=True, names=[sid])
            assert prob is not None
            unc = uncertainty_of(prob, "entropy")
            s = score_image(truth, labels, len(classes), image_id=sid, classes_for_bf1=[k])
            rows.append(
                {
                    "dataset": dataset,
                    "split": split,
                    "id": sid,
                    "class_of_interest": coi,
                    "entropy": float(uncertainty_of(prob, "entropy").mean()),
                    "margin": float(uncertainty_of(prob, "margin").mean()),
                    "error": float(1 - s.iou[k]),
                    "error_mean_iou": float(1 - np.nanmean(s.iou)),
                    "truth_fraction": float((truth == k).mean()),
                    "pred_fraction": float((labels == k).mean()),
                    "pixel_auroc": pixel_auroc(unc, labels != truth),
                    "error_pixels": float((labels != truth).mean()),
                }
            )
            tiles += tile_pairs(unc, labels != truth)
            print(json.dumps(rows[-1]), flush=True)
    return rows


def spearman(x: list[float], y: list[float]) -> dict[str, float | int]:
    from scipy.stats import spearmanr

    x_, y_ = np.asarray(x), np.asarray(y)
    ok = np.isfinite(x_) & np.isfinite(y_)
    r = spearmanr(x_[ok], y_[ok])
    return {"rho": float(r.statistic), "p": float(r.pvalue), "n": int(ok.sum())}


def correlation(a: argparse.Namespace) -> None:
    results: dict[str, Any] = {"settings": {**_settings(a), "epochs": a.epochs, "seed": 0}}
    all_rows: list[dict[str, Any]] = []
    for name in a.datasets.split(","):
        data = a.data_root / name
        run, secs = train_once(data, a.out / "runs" / name, **_settings(a), epochs=a.epochs, seed=0)
        tiles: list[tuple[float, float]] = []
        rows = slice_rows(run.path, data, name, tiles)
        all_rows += rows
        err = [r["error"] for r in rows]
        results[name] = {
            "train_seconds": secs,
            "class_of_interest": rows[0]["class_of_interest"],
            "entropy_vs_error": spearman([r["entropy"] for r in rows], err),
            "margin_vs_error": spearman([r["margin"] for r in rows], err),
            "entropy_vs_error_mean_iou": spearman(
                [r["entropy"] for r in rows], [r["error_mean_iou"] for r in rows]
            ),
            "mean_error": float(np.nanmean(err)),
            "pixel_auroc_mean": float(np.nanmean([r["pixel_auroc"] for r in rows])),
            "tile_entropy_vs_error": spearman([t[0] for t in tiles], [t[1] for t in tiles]),
        }
    write_json(a.out / "correlation.json", results)
    with open(a.out / "correlation.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(all_rows[0]))
        w.writeheader()
        w.writerows(all_rows)
    print("\n| dataset | class | slices (val+test) | mean 1-IoU | Spearman rho entropy | p "
          "| rho margin | p | rho entropy vs 1-mean IoU | p |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in a.datasets.split(","):
        r = results[name]
        e, m, mi = (r["entropy_vs_error"], r["margin_vs_error"], r["entropy_vs_error_mean_iou"])
        print(f"| {name} | {r['class_of_interest']} | {e['n']} | {r['mean_error']:.3f} "
              f"| {e['rho']:+.2f} | {e['p']:.3f} | {m['rho']:+.2f} | {m['p']:.3f} "
              f"| {mi['rho']:+.2f} | {mi['p']:.3f} |")  # fmt: skip
    print("\n| dataset | pixel AUROC, entropy -> wrong pixel (mean over slices) "
          f"| {TILE} px tiles | Spearman rho tile entropy vs tile error | p |")  # fmt: skip
    print("|---|---|---|---|---|")
    for name in a.datasets.split(","):
        r = results[name]
        t = r["tile_entropy_vs_error"]
        print(f"| {name} | {r['pixel_auroc_mean']:.3f} | {t['n']} | {t['rho']:+.2f} "
              f"| {t['p']:.2g} |")  # fmt: skip


def subset(src: Path, dst: Path, ids: list[str]) -> Path:
    """A dataset folder ``dst`` whose ``train/`` holds ``ids`` of ``src``'s training slices
    (symbolic links) and whose ``val/`` and ``test/`` are ``src``'s."""
    train = {sid: (fi, fm) for sid, fi, fm in pairs(src, "train")}
    for sub in ("images", "masks"):
        (dst / "train" / sub).mkdir(parents=True, exist_ok=True)
        for f in (dst / "train" / sub).iterdir():
            f.unlink()
    for sid in ids:
        fi, fm = train[sid]
        (dst / "train" / "images" / fi.name).symlink_to(fi.resolve())
        (dst / "train" / "masks" / fm.name).symlink_to(fm.resolve())
    for split in SPLITS:
        if not (dst / split).exists():
            (dst / split).symlink_to((src / split).resolve())
    (dst / "dataset.json").write_text((src / "dataset.json").read_text())
    return dst


def test_scores(run: Path, data: Path, out: Path) -> dict[str, float]:
    summary, _ = evaluate_run(
        run, data, out, settings=InferenceSettings(device="cpu"), overwrite=True
    )
    k = summary.classes.index(summary.class_of_interest)
    return {"test_iou": float(summary.mean_iou[k]), "test_bf1": float(summary.mean_bf1[k])}


def cached(path: Path, make: Any) -> Any:
    """The JSON in ``path``, or ``make()`` written there (so that a rerun, or several
    processes each doing some seeds, only compute what is missing)."""
    if path.is_file():
        return json.loads(path.read_text())
    value = make()
    write_json(path, value)
    return value


def active(a: argparse.Namespace) -> None:
    src = a.data_root / a.al_data
    root = a.out / "active"
    ids = [sid for sid, _, _ in pairs(src, "train")]
    base_ids = a.base.split(",")
    pool = [sid for sid in ids if sid not in base_ids]
    base_data = subset(src, root / "data_base", base_ids)
    base, secs = train_once(base_data, root / "base", **_settings(a), epochs=a.epochs, seed=0)
    rows: list[dict[str, Any]] = []
    if a.picks is None:  # with --picks: a worker that only fine-tunes its seeds
        rows.append(cached(root / "row_base.json", lambda: {
            "strategy": "base", "slices": base_ids, "seed": 0, "train_seconds": secs,
            **test_scores(base.path, base_data, root / "eval_base"),
        }))  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)

    def ranking() -> dict[str, Any]:
        stack = np.stack([read_image(f) for sid, f, _m in pairs(src, "train") if sid in pool])
        return suggest(base.path, stack, n=a.k, settings=InferenceSettings(device="cpu"))

    ranked = {"slices": None} if a.picks else cached(root / "suggest.json", ranking)
    picked = a.picks.split(",") if a.picks else [pool[s["index"]] for s in ranked["slices"]]
    for seed in [int(s) for s in a.seeds.split(",")]:
        drawn = [pool[i] for i in np.random.default_rng(seed).choice(len(pool), a.k, False)]
        for strategy, new in (("suggest", picked), ("random", drawn)):
            name = f"{strategy}_s{seed}"

            def fine_tune(name=name, new=new, seed=seed, strategy=strategy) -> dict[str, Any]:
                data = subset(src, root / f"data_{name}", base_ids + new)
                run, secs = train_once(data, root / name, **_settings(a), epochs=a.ft_epochs,
                                       seed=seed, init=base.path)  # fmt: skip
                return {"strategy": strategy, "slices": new, "seed": seed,
                        "train_seconds": secs,
                        **test_scores(run.path, data, root / f"eval_{name}")}  # fmt: skip

            rows.append(cached(root / f"row_{name}.json", fine_tune))
            print(json.dumps(rows[-1]), flush=True)
    if a.picks:
        return
    result = {
        "dataset": a.al_data,
        "settings": {**_settings(a), "base_epochs": a.epochs, "fine_tune_epochs": a.ft_epochs},
        "base_slices": base_ids,
        "pool": pool,
        "suggest_scores": dict(zip(pool, ranked["scores"], strict=True)),
        "runs": rows,
    }
    write_json(a.out / "active.json", result)
    print(f"\n{a.al_data}: base on {base_ids}; suggest picked {picked} from {len(pool)} slices")
    print("| training slices | test IoU | test BF1 | runs |")
    print("|---|---|---|---|")
    for strategy in ("base", "suggest", "random"):
        sel = [r for r in rows if r["strategy"] == strategy]
        iou = np.array([r["test_iou"] for r in sel])
        bf1 = np.array([r["test_bf1"] for r in sel])
        label = {"base": f"{len(base_ids)} (base)", "suggest": f"+{a.k} by suggest",
                 "random": f"+{a.k} at random"}[strategy]  # fmt: skip
        print(f"| {label} | {iou.mean():.3f} ± {iou.std(ddof=1) if len(iou) > 1 else 0:.3f} "
              f"| {bf1.mean():.3f} ± {bf1.std(ddof=1) if len(bf1) > 1 else 0:.3f} "
              f"| {len(sel)} |")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--part", choices=("correlation", "active", "all"), default="all")
    ap.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    ap.add_argument("--datasets", default="xct-dendrite,em-vnc-mito,stem-pt")
    ap.add_argument("--al-data", default="em-vnc-mito")
    ap.add_argument("--base", default="00,07", help="training slice ids of the base run")
    ap.add_argument("--k", type=int, default=2, help="slices added")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument(
        "--picks", default=None, help="worker: fine-tune only, on these suggested slice ids"
    )
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--ft-epochs", type=int, default=2)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--crop-size", type=int, default=96)
    ap.add_argument("--crops", type=int, default=96)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    if a.part in ("correlation", "all"):
        correlation(a)
    if a.part in ("active", "all"):
        active(a)


if __name__ == "__main__":
    main()
