"""3D object labelling of full-size segmented stacks: time and peak memory of ``tomoseg objects``
(``analyze_objects``) labelling slab by slab, projected to the seed's 1800x1920x2300 volume, and
the chunked result checked against labelling the whole volume in memory.

The volume is a synthetic class-id stack (uint8 OME-Zarr-like Zarr array, 0 = background,
1 = the class) of 1920x2300 slices holding soma-like spheres (radius 8-30 px) and vessel-like
tubes (radius 3-7 px, running through the stack at an angle; about one sphere per 4 Mvoxel and 18
tubes per 1920x2300 slice, a density chosen for this benchmark), so that objects cross slab
faces. Each measurement runs in its own process so its peak RSS is its
own. Meshes are skipped (``meshes=0``): this measures labelling, measuring and writing the
label volume.

    python bench/bench_objects.py                         # Z = 32 and 128, slabs of 32
    python bench/bench_objects.py --z 64 256 --chunk 64
    python bench/bench_objects.py --z 8 16 --shape 256x256 --chunk 4   # a smoke test
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from _worker import in_subprocess, parse_or_serve, peak_rss_mib


def _objects(nz: int, h: int, w: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Spheres and tubes as chains of balls: one (centres (K, 3) zyx, radii (K,)) per object."""
    rng = np.random.default_rng(seed)
    balls = []
    n_soma = max(1, int(nz * h * w / 4.0e6))  # ~1 soma per 4 Mvoxel
    for _ in range(n_soma):
        c = rng.uniform([0, 0, 0], [nz, h, w])
        balls.append((c[None, :], np.array([rng.uniform(8, 30)])))
    n_tube = max(1, int(h * w / 2.5e5))  # ~18 tubes through a 1920x2300 slice
    for _ in range(n_tube):
        start = rng.uniform([0, 0, 0], [1, h, w])
        start[0] = -10
        d = rng.normal(size=3)
        d[0] = abs(d[0]) + 1.0
        d /= d[0]  # one z step per unit
        steps = np.arange(0, nz + 20, 2.0)
        centres = start[None, :] + steps[:, None] * d[None, :]
        r = rng.uniform(3, 7)
        balls.append((centres, np.full(len(centres), r)))
    return balls


def make_volume(path: Path, nz: int, shape: tuple[int, int], seed: int = 0) -> Path:
    """Write the synthetic class-id volume as a Zarr array, one slice at a time."""
    import zarr

    h, w = shape
    arr = zarr.open_array(
        str(path), mode="w", shape=(nz, h, w), chunks=(1, min(h, 1024), min(w, 1024)), dtype="u1"
    )
    balls = _objects(nz, h, w, seed)
    centres = np.concatenate([c for c, _ in balls])
    radii = np.concatenate([r for _, r in balls])
    for z in range(nz):
        sl = np.zeros((h, w), np.uint8)
        dz = centres[:, 0] - z
        near = np.abs(dz) < radii
        for (_cz, cy, cx), r, ddz in zip(centres[near], radii[near], dz[near], strict=True):
            rr = np.sqrt(r * r - ddz * ddz)
            y0, y1 = max(0, int(cy - rr)), min(h, int(cy + rr) + 1)
            x0, x1 = max(0, int(cx - rr)), min(w, int(cx + rr) + 1)
            if y0 >= y1 or x0 >= x1:
                continue
            yy, xx = np.ogrid[y0:y1, x0:x1]
            sl[y0:y1, x0:x1] |= ((yy - cy) ** 2 + (xx - cx) ** 2 <= rr * rr).astype(np.uint8)
        arr[z] = sl
    return path


def worker(spec: dict) -> dict:
    """Label one volume in this process; return seconds, peak RSS and the object count."""
    from tomoseg.evaluation.objects import analyze_objects

    t0 = time.perf_counter()
    summary = analyze_objects(
        spec["volume"],
        spec["out"],
        connectivity=26,
        chunk_slices=spec["chunk"],
        meshes=0,
        overwrite=True,
    )
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "peak_mib": peak_rss_mib(), "objects": summary["count"]}


def same_result(a: Path, b: Path) -> bool:
    """Chunked and in-memory outputs agree: identical label volumes and object tables."""
    import zarr

    la = zarr.open_array(str(a / "objects.zarr" / "0"), mode="r")
    lb = zarr.open_array(str(b / "objects.zarr" / "0"), mode="r")
    if la.shape != lb.shape:
        return False
    for z in range(la.shape[0]):
        if not np.array_equal(la[z], lb[z]):
            return False
    return (a / "objects.csv").read_text() == (b / "objects.csv").read_text()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--z", type=int, nargs="+", default=[32, 128], help="slice counts")
    ap.add_argument("--chunk", type=int, default=32, help="slices per slab")
    ap.add_argument("--project", type=int, default=1800, help="project to this many slices")
    args = parse_or_serve(ap, argv, worker)
    if args is None:
        return 0
    h, w = args.hw
    rows = []
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        root = Path(tmp)
        for k, nz in enumerate(args.z):
            vol = make_volume(root / f"vol{nz}.zarr", nz, (h, w))
            r = in_subprocess(
                __file__, {"volume": str(vol), "out": str(root / "chunked"), "chunk": args.chunk}
            )
            row = {
                "slices": nz,
                "shape": [h, w],
                "chunk": args.chunk,
                "objects": r["objects"],
                "s_per_slice": round(r["seconds"] / nz, 4),
                "peak_mib": round(r["peak_mib"], 1),
            }
            if k == 0:  # the equality check, on the smallest volume (it must fit in memory)
                m = in_subprocess(
                    __file__, {"volume": str(vol), "out": str(root / "memory"), "chunk": None}
                )
                row["in_memory"] = {
                    "s_per_slice": round(m["seconds"] / nz, 4),
                    "peak_mib": round(m["peak_mib"], 1),
                    "equal_to_chunked": same_result(root / "chunked", root / "memory"),
                }
                shutil.rmtree(root / "memory")
            shutil.rmtree(root / "chunked")
            shutil.rmtree(vol)
            rows.append(row)
            mem = row.get("in_memory")
            extra = (
                f" | in memory {mem['s_per_slice']:.3f} s/slice, {mem['peak_mib']:.0f} MiB, "
                f"equal to chunked: {mem['equal_to_chunked']}"
                if mem
                else ""
            )
            print(
                f"Z={nz} {w}x{h}, slabs of {args.chunk}: {row['objects']} objects, "
                f"{row['s_per_slice']:.3f} s/slice, peak {row['peak_mib']:.0f} MiB{extra}",
                flush=True,
            )
    last = rows[-1]
    print(
        f"projected for {args.project}x{h}x{w} (slabs of {args.chunk}): "
        f"{last['s_per_slice'] * args.project / 60:.1f} min at {last['s_per_slice']:.3f} s/slice, "
        f"peak memory ~{last['peak_mib']:.0f} MiB (x{last['peak_mib'] / rows[0]['peak_mib']:.2f} "
        f"from {rows[0]['slices']} to {last['slices']} slices)",
        flush=True,
    )
    print(json.dumps(rows, indent=2))
    return 0 if all(r.get("in_memory", {}).get("equal_to_chunked", True) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
