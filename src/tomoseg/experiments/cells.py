"""The crop sweep's grid: cases, cells and their statistics (written here: no library plans a crop-size x crop-count sweep)."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from tomoseg.errors import TomosegError
from tomoseg.metrics.segmentation import nanmean

SWEEP_FILE = "sweep.json"
SWEPT = ("crop_size", "crops", "seed", "epochs", "max_minutes", "device", "workers")
FULL = 0  # crop_size 0 = whole images


# ----------------------------------------------------------------------------- the grid


def _parse_int_list(
    text: str, option: str, example: str, minimum: int, words: dict[str, int]
) -> list[int]:
    """Parse a comma-separated list of integers >= ``minimum`` (or the given words) for an option.

    Raises:
        TomosegError: empty or malformed list, a value below the minimum, a duplicate.
    """
    items = [t.strip().lower() for t in str(text).split(",")]
    if any(not t for t in items):
        raise TomosegError(f"{option}={text!r}: must be a comma-separated list like {example}")
    values = []
    for t in items:
        if t in words:
            values.append(words[t])
            continue
        try:
            v = int(t)
        except ValueError:
            alt = "".join(f" or '{w}'" for w in words)
            raise TomosegError(f"{option}={text!r}: '{t}' is not an integer{alt}") from None
        if v < minimum:
            raise TomosegError(f"{option}={text!r}: {v} is below the minimum of {minimum}")
        values.append(v)
    if len(set(values)) != len(values):
        raise TomosegError(f"{option}={text!r} lists a value twice")
    return values


def parse_sizes(text: str) -> list[int]:
    """Parse ``"100,224,full"`` into crop sizes (each >= 16; ``full`` -> 0 = whole images)."""
    return _parse_int_list(text, "sizes", "100,224,full", 16, {"full": FULL})


def parse_counts(text: str) -> list[int]:
    """Parse ``"250,500,1000"`` into crop counts (each >= 1)."""
    return _parse_int_list(text, "counts", "250,500", 1, {})


def size_label(size: int) -> str:
    """``"full"`` for whole images, else the size."""
    return "full" if size == FULL else str(size)


@dataclass(frozen=True)
class Case:
    """One cell repeat of the grid."""

    size: int
    count: int
    repeat: int
    seed: int

    @property
    def id(self) -> str:
        """Folder name, e.g. ``s224_n1000_r0``."""
        return f"s{size_label(self.size)}_n{self.count}_r{self.repeat}"


def plan_cases(sizes: list[int], counts: list[int], repeats: int, base_seed: int) -> list[Case]:
    """All cases, repeat-major (every cell's first repeat before any second repeat), so an
    interrupted sweep already covers the whole grid once. Repeat r uses seed ``base_seed + r``."""
    if repeats < 1:
        raise TomosegError(f"repeats={repeats} must be at least 1")
    return [
        Case(s, n, r, base_seed + r) for r, s, n in itertools.product(range(repeats), sizes, counts)
    ]


@dataclass
class CellStats:
    """Mean and standard deviation over the finished repeats of one (size, count) cell."""

    size: int
    count: int
    n: int
    failed: int
    iou_mean: float
    iou_std: float
    bf1_mean: float
    bf1_std: float


def cell_stats(
    records: list[dict], sizes: list[int], counts: list[int], coi: str
) -> list[CellStats]:
    """Aggregate the repeats of each cell (NaN where no repeat finished)."""
    out = []
    for s in sizes:
        for n in counts:
            rs = [r for r in records if r["size"] == s and r["count"] == n]
            done = [r for r in rs if r["status"] == "done"]
            iou = np.array(
                [r["iou"][coi] if r["iou"][coi] is not None else np.nan for r in done], float
            )
            bf1 = np.array(
                [r["bf1"][coi] if r["bf1"][coi] is not None else np.nan for r in done], float
            )

            def sd(a):
                a = a[~np.isnan(a)]
                return float(np.std(a, ddof=1)) if a.size > 1 else float("nan")

            out.append(
                CellStats(
                    s,
                    n,
                    len(done),
                    sum(r["status"] == "failed" for r in rs),
                    float(nanmean(iou)),
                    sd(iou),
                    float(nanmean(bf1)),
                    sd(bf1),
                )
            )
    return out


def noise_verdicts(
    stats: list[CellStats], key: str = "iou"
) -> tuple[CellStats | None, list[tuple[CellStats, bool]]]:
    """The best cell by mean and, for every other cell, whether its difference from the best lies
    within the noise: ``|difference| <= 2 x sqrt(se_best^2 + se_cell^2)`` with se = std / sqrt(n)
    (about a 95 % interval). Cells with a single repeat have no noise estimate (verdict False)."""
    ok = [c for c in stats if not math.isnan(getattr(c, f"{key}_mean"))]
    if not ok:
        return None, []
    best = max(ok, key=lambda c: getattr(c, f"{key}_mean"))

    def se(c):
        s = getattr(c, f"{key}_std")
        return s / math.sqrt(c.n) if c.n > 1 and not math.isnan(s) else float("nan")

    verdicts = []
    for c in ok:
        if c is best:
            continue
        d = getattr(best, f"{key}_mean") - getattr(c, f"{key}_mean")
        tol = 2 * math.sqrt(se(best) ** 2 + se(c) ** 2)
        verdicts.append((c, not math.isnan(tol) and abs(d) <= tol))
    return best, verdicts
