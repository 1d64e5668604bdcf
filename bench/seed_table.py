"""Mean and spread over seeds of test IoU / BF1 of the class of interest, from ``evaluate`` reports.

Each argument is ``LABEL=DIR[,DIR...]``: the ``tomoseg evaluate`` output folders (holding
``metrics.json``) of one configuration trained with different seeds. Prints a markdown table:
each seed's score, the mean and the sample standard deviation over seeds, with the tuned
decision (the reports' ``mean``) and without it (``without_postprocess``). docs/training.md
section 8 was made with it:

    python bench/seed_table.py "em, last=runs/s0/test-last,runs/s1/test-last,runs/s2/test-last" \\
        "em, best=runs/s0/test,runs/s1/test,runs/s2/test"
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def coi_scores(report: Path) -> tuple[float, float, float, float]:
    """(IoU, BF1, IoU without the decision, BF1 without it) of the class of interest."""
    m = json.loads((report / "metrics.json").read_text())
    c = m["class_of_interest"]
    raw = m.get("without_postprocess") or m
    return m["mean"]["iou"][c], m["mean"]["bf1"][c], raw["mean"]["iou"][c], raw["mean"]["bf1"][c]


def spread(values: list[float]) -> str:
    """``mean ± sample sd`` (the value alone for one seed)."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main(args: list[str]) -> None:
    if not args or any("=" not in a for a in args):
        raise SystemExit(__doc__)
    print(
        "| configuration | seeds: IoU / BF1 | mean IoU | mean BF1 | without the decision: IoU / BF1 |"
    )
    print("|---|---|---|---|---|")
    for arg in args:
        label, dirs = arg.split("=", 1)
        rows = [coi_scores(Path(d)) for d in dirs.split(",")]
        seeds = ", ".join(f"{r[0]:.3f} / {r[1]:.3f}" for r in rows)
        cols = list(zip(*rows, strict=True))
        raw = f"{spread(list(cols[2]))} / {spread(list(cols[3]))}"
        print(f"| {label} | {seeds} | {spread(list(cols[0]))} | {spread(list(cols[1]))} | {raw} |")


if __name__ == "__main__":
    main(sys.argv[1:])
