"""Peak memory (RSS) of ``predict`` on one large uint16 slice against its size: by bands of
rows (the default) and the whole-slice path (``band_rows=0``), measured in the same run, one
subprocess per size and path (its peak RSS from ``os.wait4``'s rusage).

    python bench/bench_bigslice.py [--sizes 2000,5000,10000,20000] [--run RUN] [--threads 1]
        [--whole-up-to N]

Without ``--run`` a tiny network is trained first (width 4, depth 3, 1 epoch, seed 0: the
memory of a slice's inference hardly depends on the width, its time does). Tiles of 256 px (the CPU default). The slice is a
seeded random uint16 TIFF written uncompressed (read by bands); the masks are
written as TIFF (strip by strip). The whole-slice path is skipped where it would take more than
40 % of the available memory (about 31 bytes per pixel). Prints a table: peak RSS, time, the
ratio whole / bands, and whether both masks are identical.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

CHILD = """
import sys, torch
torch.set_num_threads(int(sys.argv[4]))
from tomoseg.inference.predict import predict_paths
from tomoseg.inference.predictor import InferenceSettings
band = None if sys.argv[5] == "auto" else int(sys.argv[5])
predict_paths(sys.argv[1], [sys.argv[2]], sys.argv[3], format="tif",
              settings=InferenceSettings(device="cpu", band_rows=band, tile_size=0))
"""


def make_slice(path: Path, n: int, seed: int = 0) -> None:
    """A seeded random (n, n) uint16 slice written by bands (never whole in memory)."""
    rng = np.random.default_rng(seed)
    out = tifffile.memmap(path, shape=(n, n), dtype=np.uint16)
    for y in range(0, n, 1000):
        h = min(1000, n - y)
        blobs = (rng.random((h // 10 + 1, n // 10 + 1)) > 0.6).astype(np.uint16) * 20000
        blobs = blobs.repeat(10, 0).repeat(10, 1)[:h, :n]
        out[y : y + h] = blobs + rng.integers(0, 8000, (h, n), dtype=np.uint16)
    out.flush()
    del out


def measure(run: Path, image: Path, out: Path, threads: int, band: str) -> tuple[float, float]:
    """(peak RSS in GB, seconds) of one ``predict`` in a subprocess."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(run), str(image), str(out), str(threads), band],
        env=env,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    secs = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"predict failed on {image} (band_rows={band})")
    return usage.ru_maxrss * 1024 / 1e9, secs  # ru_maxrss is in KiB on Linux


def tiny_run(root: Path) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import TINY_TRAIN, make_dataset

    import tomoseg

    data = make_dataset(root / "data", shape=(64, 64))
    return tomoseg.train(data, root / "run", **TINY_TRAIN, seed=0).path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2000,5000,10000,20000")
    ap.add_argument("--run", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--whole-up-to", type=int, default=None, help="skip the whole path above")
    args = ap.parse_args()
    from tomoseg.utils.memory import available_memory

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        run = args.run or tiny_run(tmp)
        print(f"run {run}, {args.threads} torch thread(s), load average {os.getloadavg()}")
        print(f"{'slice':>12} {'bands GB':>9} {'bands s':>8} {'whole GB':>9} {'whole s':>8} "
              f"{'GB ratio':>9} {'same':>5}")  # fmt: skip
        for n in (int(v) for v in args.sizes.split(",")):
            image = tmp / f"slice{n}.tif"
            make_slice(image, n)
            gb, secs = measure(run, image, tmp / f"bands{n}", args.threads, "auto")
            row = f"{n:>5}x{n:<6} {gb:9.2f} {secs:8.1f}"
            fits = 31 * n * n < 0.4 * available_memory()
            if fits and (args.whole_up_to is None or n <= args.whole_up_to):
                wgb, wsecs = measure(run, image, tmp / f"whole{n}", args.threads, "0")
                same = np.array_equal(
                    tifffile.imread(tmp / f"bands{n}" / f"slice{n}.tif"),
                    tifffile.imread(tmp / f"whole{n}" / f"slice{n}.tif"),
                )
                row += f" {wgb:9.2f} {wsecs:8.1f} {wgb / gb:9.1f} {str(same):>5}"
            else:
                row += f" {'(whole path skipped)':>39}"
            print(row, flush=True)
            image.unlink()


if __name__ == "__main__":
    main()
