"""Label efficiency with and without self-supervised pretraining (``tomoseg pretrain``).

    PYTHONPATH=src python bench/label_efficiency.py OUT [--data ../shared/data/em-vnc-mito]
        [--labelled 2,all] [--seeds 0] [--epochs 10 | --budget MIN]
        [--pretrain-epochs 12 | --pretrain-budget MIN] [--pretrain-test] [--jobs K] [--reuse]

1. Datasets with N labelled training slices: ``OUT/data/nN`` (symlinks to N training images
   and masks, evenly spaced from the first of the training slices that hold the class of
   interest, and to the val and test splits; nothing is
   copied), ``all`` being the dataset itself.
2. One pretraining on the unlabelled images of the train and val splits (strict: the test
   images are not seen, even unlabelled; ``--pretrain-test`` adds them), ``OUT/pre``.
3. For each N and seed: a training from scratch and one with ``--init OUT/pre``, the same
   network and budget (``--width``, ``--depth``, ``--crop-size``, ``--crops``, ``--epochs`` or
   ``--budget`` minutes, a time budget as ``train --time-budget``; eager steps, as the
   pretraining's),
   then ``tomoseg evaluate`` on the test split.
4. A markdown table of test IoU / BF1 of the class of interest, and for each N the share of
   the gap between N and all labelled slices that pretraining recovers.

Every step runs the ``tomoseg`` command line (one process each, ``OMP_NUM_THREADS`` as the
environment sets it; ``--jobs`` trainings at once); ``--reuse`` keeps the runs and evaluations already finished in OUT.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

CMD = [sys.executable, "-m", "tomoseg.cli"]


def run(args: list[str], log: Path) -> None:
    """Run a tomoseg command, its output appended to ``log``; stop on failure."""
    with open(log, "a") as f:
        f.write("$ tomoseg " + " ".join(args) + "\n")
        f.flush()
        code = subprocess.call([*CMD, *args], stdout=f, stderr=subprocess.STDOUT)
    if code != 0:
        sys.exit(f"tomoseg {args[0]} failed ({code}); see {log}")


def holds_class(mask: Path, class_id: int) -> bool:
    """Whether a mask holds a pixel of ``class_id``."""
    from tomoseg.io.images import read_mask

    return bool((read_mask(mask) == class_id).any())


def subset(data: Path, n: str, out: Path, class_id: int) -> Path:
    """A dataset folder of ``n`` labelled training slices (symlinks), or ``data`` for ``all``:
    evenly spaced among the training slices that hold the class of interest (a user labels
    slices that show it; every em-vnc-mito slice does, 36 of stem-pt's 40)."""
    if n == "all":
        return data
    folder = out / "data" / f"n{n}"
    masks = {p.stem: p for p in (data / "train" / "masks").iterdir()}
    images = [
        p
        for p in sorted((data / "train" / "images").iterdir())
        if holds_class(masks[p.stem], class_id)
    ]
    picks = [i * len(images) // int(n) for i in range(int(n))]  # 2 of 14: the 1st and 8th
    for sub in ("images", "masks"):
        (folder / "train" / sub).mkdir(parents=True, exist_ok=True)
    for i in picks:
        img = images[i]
        for src, sub in ((img, "images"), (masks[img.stem], "masks")):
            link = folder / "train" / sub / src.name
            if not link.exists():
                link.symlink_to(src.resolve())
    for name in ("dataset.json", "val", "test"):
        link = folder / name
        if (data / name).exists() and not link.exists():
            link.symlink_to((data / name).resolve())
    return folder


def unlabelled(data: Path, out: Path, splits: tuple[str, ...]) -> Path:
    """A folder of symlinks to the images of ``splits`` (their masks unused)."""
    folder = out / "data" / ("unlabelled-" + "-".join(splits))
    folder.mkdir(parents=True, exist_ok=True)
    for split in splits:
        for img in sorted((data / split / "images").iterdir()):
            link = folder / f"{split}-{img.name}"
            if not link.exists():
                link.symlink_to(img.resolve())
    return folder


def scores(test: Path, coi: str) -> tuple[float, float]:
    mean = json.loads((test / "metrics.json").read_text())["mean"]
    return float(mean["iou"][coi]), float(mean["bf1"][coi])


def epoch_minutes(run: Path) -> float:
    """Minutes the run's epochs took (the ``seconds`` column of its ``metrics.csv``)."""
    import csv

    with open(run / "metrics.csv", newline="") as f:
        return sum(float(r["seconds"] or 0) for r in csv.DictReader(f)) / 60


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/em-vnc-mito"))
    ap.add_argument("--labelled", default="2,all", help="labelled training slices, e.g. 1,2,4,all")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--width", default="16")
    ap.add_argument("--depth", default="4")
    ap.add_argument("--crop-size", default="128")
    ap.add_argument("--crops", default="160")
    ap.add_argument("--epochs", default="10")
    ap.add_argument("--val-every", default="5")
    ap.add_argument("--pretrain-epochs", default="12")
    ap.add_argument("--budget", help="minutes per training (--time-budget; replaces --epochs)")
    ap.add_argument("--pretrain-budget", help="minutes of pretraining (replaces its epochs)")
    ap.add_argument("--pretrain-test", action="store_true", help="also pretrain on test images")
    ap.add_argument("--reuse", action="store_true", help="keep finished runs in OUT")
    ap.add_argument("--pretrain-only", action="store_true", help="pretrain, then stop")
    ap.add_argument("--jobs", type=int, default=1, help="trainings run at once")
    a = ap.parse_args()
    out, data = a.out.resolve(), a.data.resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "log.txt"
    spec = json.loads((data / "dataset.json").read_text())
    coi = spec.get("class_of_interest") or spec["classes"][-1]
    net = ["--width", a.width, "--depth", a.depth, "--crop-size", a.crop_size]
    net += ["--crops", a.crops]
    pre = out / "pre"
    pre_schedule = ["--epochs", a.pretrain_epochs]
    if a.pretrain_budget:
        pre_schedule = ["--time-budget", a.pretrain_budget]
    schedule = ["--time-budget", a.budget] if a.budget else ["--epochs", a.epochs]
    if not (a.reuse and (pre / "last.safetensors").is_file()):
        splits = ("train", "val", "test") if a.pretrain_test else ("train", "val")
        images = unlabelled(data, out, splits)
        run(["pretrain", "--images", str(images), "--out", str(pre), *net,
             *pre_schedule, "--overwrite", "--quiet"], log)  # fmt: skip
    if a.pretrain_only:
        return
    tasks = [
        (n, seed, init)
        for n in a.labelled.split(",")
        for seed in a.seeds.split(",")
        for init in ("scratch", "pretrained")
    ]
    class_id = spec["classes"].index(coi)
    folders = {n: subset(data, n, out, class_id) for n in a.labelled.split(",")}

    def one(task: tuple[str, str, str]) -> tuple[float, float]:
        n, seed, init = task
        name = f"n{n}-{init}-s{seed}"
        r, t = out / "runs" / name, out / "runs" / f"{name}-test"
        if not (a.reuse and (t / "metrics.json").is_file()):
            extra = ["--init", str(pre)] if init == "pretrained" else []
            own = out / "runs" / f"{name}.log"
            own.parent.mkdir(parents=True, exist_ok=True)
            run(["train", "--data", str(folders[n]), "--out", str(r), *net, *extra,
                 *schedule, "--val-every", a.val_every, "--seed", seed, "--compile", "off",
                 "--overwrite", "--quiet"], own)  # fmt: skip
            run(["evaluate", str(r), "--data", str(data), "--out", str(t), "--overwrite"], own)
        minutes.append(epoch_minutes(r))
        return scores(t, coi)

    minutes: list[float] = []
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(a.jobs) as pool:
        done = list(pool.map(one, tasks))
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for (n, _, init), score in zip(tasks, done, strict=True):
        results.setdefault((n, init), []).append(score)
    print(table(results, a, coi))
    print(
        f"\ntraining epochs: {np.mean(minutes):.1f} min per run on average "
        f"({min(minutes):.1f}-{max(minutes):.1f}), {a.jobs} at once"
    )


def table(results: dict, a: argparse.Namespace, coi: str) -> str:
    lines = [
        f"{a.data.name}, test split, {coi}; U-Net width {a.width} depth {a.depth}, "
        f"{a.crops} crops of {a.crop_size} px x "
        + (f"a {a.budget}-min time budget" if a.budget else f"{a.epochs} epochs")
        + "; pretraining "
        + (f"{a.pretrain_budget} min" if a.pretrain_budget else f"{a.pretrain_epochs} epochs")
        + f"{' (test images too)' if a.pretrain_test else ''}; seeds {a.seeds}; OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')}",
        "",
        "| labelled slices | init | IoU / BF1 per seed | mean IoU | mean BF1 |",
        "|---|---|---|---|---|",
    ]
    mean: dict[tuple[str, str], float] = {}
    for (n, init), rows in results.items():
        iou, bf1 = np.array([r[0] for r in rows]), np.array([r[1] for r in rows])
        mean[(n, init)] = float(iou.mean())
        each = ", ".join(f"{i:.3f} / {b:.3f}" for i, b in rows)
        sd = f" ± {iou.std(ddof=1):.3f}" if len(rows) > 1 else ""
        lines.append(f"| {n} | {init} | {each} | {iou.mean():.3f}{sd} | {bf1.mean():.3f} |")
    ns = [n for n in a.labelled.split(",") if n != "all"]
    if ns and ("all", "scratch") in mean:
        lines.append("")
        for few in ns:
            gap = mean[("all", "scratch")] - mean[(few, "scratch")]
            gain = mean[(few, "pretrained")] - mean[(few, "scratch")]
            share = f"{gain / gap:.0%}" if gap > 0 else "n/a (no gap)"
            lines.append(
                f"- {few} labelled: gap to all (scratch) {gap:+.3f} IoU; pretraining "
                f"{gain:+.3f} IoU; share of the gap recovered: {share}"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
