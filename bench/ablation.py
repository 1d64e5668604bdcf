"""Issue 13 ablation: how much TTA, the tuned decision and EMA add to today's default.

One training run (the default configuration, ``--time-budget`` minutes) gives four test scores
without retraining: baseline (no TTA, no tuned decision), +TTA, +tuned decision, +both (the
decision retuned with TTA on a copy of the run). ``--ema-decay`` adds a second training with
EMA weights (scored like the baseline). Prints a markdown table: test IoU / BF1 of the class of
interest, training minutes, and the epoch-to-epoch swing of validation IoU over the last
quarter of training (max |delta IoU| between consecutive validated epochs). Writes
``<out>/ablation.json`` and ``<out>/ablation.md``.

The real measurement (quiet CPU, ~1 h)::

    PYTHONPATH=src python bench/ablation.py --data ../shared/data/em-vnc-mito \\
        --out bench/results/ablation-em --time-budget 20 --ema-decay 0.99

A smoke run on the phantom (a couple of minutes)::

    PYTHONPATH=src python bench/ablation.py --phantom --out /tmp/abl --epochs 1 \\
        --set width=4 --set depth=3 --set crops=32 --set crop_size=64 --ema-decay 0.9
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import sys
import time
from pathlib import Path

import yaml


def _value(text: str):
    return yaml.safe_load(text)


def swing(run: Path, coi: str) -> float:
    """max |delta val IoU| between consecutive validated epochs in the last quarter."""
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    vals = [float(r[f"val_iou_{coi}"]) for r in rows if r.get(f"val_iou_{coi}") not in ("", None)]
    if len(vals) < 2:
        return float("nan")
    tail = vals[-max(2, math.ceil(len(vals) / 4)) :]
    return max(abs(b - a) for a, b in zip(tail, tail[1:], strict=False))


def finished(run: Path) -> float | None:
    """Training minutes of a finished run in ``run`` (all planned epochs in metrics.csv; the
    sum of its epochs' wall seconds), else None."""
    if not (run / "run.json").is_file() or not (run / "best.safetensors").is_file():
        return None
    epochs = json.loads((run / "run.json").read_text())["config"]["epochs"]
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    if len(rows) != epochs:
        return None
    return sum(float(r["seconds"]) for r in rows) / 60


def train_run(
    data: Path, out: Path, options: dict, overwrite: bool, reuse: bool = False
) -> tuple[Path, float]:
    from tomoseg.api import train

    if reuse and (minutes := finished(out)) is not None:
        if not (out / "decision.json").is_file():  # a training stopped before its tuning
            from tomoseg.inference.tuning import tune_run

            tune_run(out, data, tta=options.get("tta"))
        print(f"reusing the finished training in {out} ({minutes:.1f} min of epochs)")
        return out, minutes
    t0 = time.perf_counter()
    run = train(data, out, overwrite=overwrite, progress=False, **options)
    return run.path, (time.perf_counter() - t0) / 60


def scores(run: Path, data: Path, out: Path, tta: str, coi: str) -> dict[str, dict[str, float]]:
    """Test IoU/BF1 of the class of interest with and without the run's tuned decision."""
    from tomoseg.inference.evaluate import evaluate_run
    from tomoseg.inference.predictor import InferenceSettings

    settings = InferenceSettings(tta=tta)
    summary, sec = evaluate_run(run, data, out, settings=settings, overwrite=True)
    m = json.loads((out / "metrics.json").read_text())
    raw = m["without_postprocess"]
    return {
        "with": {"iou": m["mean"]["iou"][coi], "bf1": m["mean"]["bf1"][coi], "s": sec},
        "without": {"iou": raw["mean"]["iou"][coi], "bf1": raw["mean"]["bf1"][coi], "s": sec},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/em-vnc-mito"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--time-budget", type=float, default=None, help="minutes per training")
    ap.add_argument("--epochs", type=int, default=None, help="instead of --time-budget")
    ap.add_argument("--tta", default="all", help="TTA of the +TTA cases (default all)")
    ap.add_argument("--ema-decay", type=float, default=None, help="also train with EMA")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any TrainConfig field for every training (repeatable)",
    )
    ap.add_argument(
        "--phantom",
        action="store_true",
        help="smoke test: a 128x128 phantom written into --out/phantom as --data",
    )
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="keep a finished training found in --out (its decision tuned if missing); "
        "its training minutes are then the sum of its epochs",
    )
    a = ap.parse_args(argv)

    from tomoseg.io.datasets import load_dataset

    out = a.out
    out.mkdir(parents=True, exist_ok=True)
    data = a.data
    if a.phantom:
        from tomoseg.synthetic.phantom import generate_phantom

        data = out / "phantom"
        if not (data / "dataset.json").is_file():
            generate_phantom(data, (128, 128), 12, 0, overwrite=True)
    coi = load_dataset(data).class_of_interest
    options = {k: _value(v) for k, v in (s.split("=", 1) for s in a.set)}
    if a.time_budget is not None:
        options["time_budget"] = a.time_budget
    if a.epochs is not None:
        options["epochs"] = a.epochs
    rows = []

    base, minutes = train_run(data, out / "baseline", options, a.overwrite, a.reuse)
    plain = scores(base, data, out / "eval-none", "none", coi)
    with_tta = scores(base, data, out / "eval-tta", a.tta, coi)
    both = scores_both(base, data, out, a.tta, coi)  # same weights, decision tuned with TTA
    sw = swing(base, coi)
    rows += [
        ("baseline", plain["without"], minutes, sw),
        (f"+TTA ({a.tta})", with_tta["without"], None, None),
        ("+tuned decision", plain["with"], None, None),
        ("+both (decision tuned with TTA)", both, None, None),
    ]
    if a.ema_decay is not None:
        ema, ema_minutes = train_run(
            data, out / "ema", {**options, "ema_decay": a.ema_decay}, a.overwrite, a.reuse
        )
        e = scores(ema, data, out / "eval-ema", "none", coi)
        rows.append((f"+EMA ({a.ema_decay})", e["without"], ema_minutes, swing(ema, coi)))
        rows.append(("+EMA +both", scores_both(ema, data, out, a.tta, coi), None, None))

    def f(v, digits=3):
        return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"

    meta = json.loads((base / "run.json").read_text())
    lines = [
        f"data {data}, class of interest {coi}, epochs {meta['config']['epochs']}"
        + (f" (time budget {a.time_budget:g} min)" if a.time_budget else ""),
        "",
        f"| case | test IoU {coi} | test BF1 {coi} | training min | val IoU swing (last quarter) |",
        "|---|---|---|---|---|",
    ]
    for name, s, mins, sw in rows:
        lines.append(f"| {name} | {f(s['iou'])} | {f(s['bf1'])} | {f(mins, 1)} | {f(sw)} |")
    text = "\n".join(lines)
    print(text)
    (out / "ablation.md").write_text(text + "\n")
    record = [
        {"case": n, "iou": s["iou"], "bf1": s["bf1"], "training_minutes": m, "val_iou_swing": w}
        for n, s, m, w in rows
    ]
    (out / "ablation.json").write_text(json.dumps(record, indent=1, default=str))
    return 0


def scores_both(run: Path, data: Path, out: Path, tta: str, coi: str) -> dict[str, float]:
    """+TTA and the decision retuned with it, on a copy of ``run`` (same weights)."""
    from tomoseg.inference.tuning import tune_run

    copy = out / f"{run.name}-tta-decision"
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoints"))
    tune_run(copy, data, tta=tta)
    return scores(copy, data, out / f"eval-{run.name}-both", tta, coi)["with"]


if __name__ == "__main__":
    sys.exit(main())
