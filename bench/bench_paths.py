"""Vessel paths on the phantom: ``tomoseg paths`` (``analyze_paths``) against the phantom's
analytic centre lines, its time and peak memory slab by slab, and the projection to the seed's
1800x1920x2300 volume.

The phantom is written with ``label_vessels=True`` (classes background, soma, vessel) into
``OUT/phantom`` (kept there for the next run); its ``truth3d/classes.tif`` is the class volume
analysed (the exact masks: this measures the skeletons, not a network's segmentation), and
``truth3d/vessels.json`` the truth: the vessels' centre lines and radii where no soma covers
them. Measured:

* total centre-line length against the truth's (``length error``);
* radius: the length-weighted mean of the branches' mean radii against the truth's, and the
  median relative error of each SWC point's radius against the nearest truth point's;
* junctions against the truth's vessel crossings (pairs of vessels whose tubes overlap: a
  crossing of two straight tubes is one or two junctions of a skeleton);
* soma contacts (path ends that reach a soma) against the truth's (a vessel's centre line
  entering a soma inside the slab);
* seconds (wall and CPU) and peak RSS of each run in its own process, in memory and slab by slab, on the
  first half of the slices and on all of them (so that the growth with Z shows), and the
  projection: the CPU seconds per voxel between the two slab runs (start-up left out; CPU time,
  as the machine may be shared; vessels filling the volume as in the phantom) times the full
  volume's voxels; peak memory scaled by the slice area (an upper bound: a slab's buffers grow
  with it, not with Z, the interpreter's share does not grow).

The preview of the last run is kept as ``OUT/preview.png``.

    python bench/bench_paths.py /tmp/paths-bench                       # 512x512, 64 slices
    python bench/bench_paths.py /tmp/pb --shape 256x256 --slices 32 --chunk 8   # a smoke test
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
from _worker import in_subprocess, parse_or_serve, peak_rss_mib

FULL = (1800, 1920, 2300)


def worker(spec: dict) -> dict:
    """One ``analyze_paths`` run in this process: seconds (wall and CPU), peak RSS, the summary."""
    import resource

    from tomoseg.evaluation.paths import analyze_paths

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    t0, c0 = time.perf_counter(), cpu()
    summary = analyze_paths(
        spec["volume"], spec["out"], class_name=2, soma_class=1,
        chunk_slices=spec["chunk"], units="voxel", overwrite=True,
    )  # fmt: skip
    return {
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": cpu() - c0,
        "peak_mib": peak_rss_mib(),
        "summary": summary,
    }


def truth_contacts(vessels: list[dict], lim: np.ndarray) -> int:
    """Where a vessel's centre line enters a soma inside the slab (visible -> hidden or back)."""
    n = 0
    for v in vessels:
        p = np.asarray(v["points"])
        vis = np.asarray(v["visible"])
        inside = np.all((p >= 0) & (p <= lim), axis=1)
        change = np.flatnonzero(vis[1:] != vis[:-1])
        n += int(sum(inside[c] and inside[c + 1] for c in change))
    return n


def swc_radius_error(swc_dir: Path, vessels: list[dict]) -> float:
    """Median |r - r_true| / r_true over SWC points, r_true from the nearest visible truth point."""
    from scipy.spatial import cKDTree

    pts = np.concatenate([np.asarray(v["points"])[np.asarray(v["visible"])] for v in vessels])
    rad = np.concatenate([np.asarray(v["radii"])[np.asarray(v["visible"])] for v in vessels])
    tree = cKDTree(pts)
    errs = []
    for f in sorted(swc_dir.glob("*.swc")):
        rows = [ln.split() for ln in f.read_text().splitlines() if ln and not ln.startswith("#")]
        if not rows:
            continue
        a = np.asarray(rows, np.float64)
        zyx = a[:, [4, 3, 2]]  # SWC: n T x y z R parent
        _, k = tree.query(zyx)
        errs.append(np.abs(a[:, 5] - rad[k]) / rad[k])
    return float(np.median(np.concatenate(errs))) if errs else float("nan")


def subset(src: Path, dst: Path, nz: int) -> Path:
    import tifffile

    with tifffile.TiffFile(src) as tf, tifffile.TiffWriter(dst) as tw:
        for z in range(nz):
            tw.write(tf.pages[z].asarray(), contiguous=True, photometric="minisblack")
    return dst


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, nargs="?", help="folder for the phantom and the results")
    ap.add_argument("--slices", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=16, help="slices per slab")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-in-memory", action="store_true", help="only the runs slab by slab")
    ap.set_defaults(shape="512x512")
    args = parse_or_serve(ap, argv, worker)
    if args is None:
        return 0
    from tomoseg.synthetic.phantom import generate_phantom

    h, w = args.hw
    out: Path = args.out
    ph = out / "phantom"
    meta = ph / "dataset.json"
    want = {"shape": [h, w], "slices": args.slices, "seed": args.seed}
    have = json.loads(meta.read_text()) if meta.is_file() else {}
    if {k: have.get(k) for k in want} != want or "classes" not in have.get("truth3d", {}):
        t0 = time.perf_counter()
        generate_phantom(
            ph, (h, w), args.slices, seed=args.seed, overwrite=True, label_vessels=True
        )
        print(f"phantom {h}x{w}x{args.slices} written in {time.perf_counter() - t0:.0f} s")
    truth = json.loads((ph / "truth3d" / "vessels.json").read_text())
    classes = ph / "truth3d" / "classes.tif"
    half = subset(classes, out / "half.tif", args.slices // 2)
    runs = {}
    plan = [
        ("in memory", classes, None),
        (f"slabs of {args.chunk}, half", half, args.chunk),
        (f"slabs of {args.chunk}", classes, args.chunk),
    ]
    for name, vol, chunk in plan[1:] if args.no_in_memory else plan:
        res = out / "paths" / name.replace(" ", "_").replace(",", "")
        runs[name] = r = in_subprocess(
            __file__, {"volume": str(vol), "out": str(res), "chunk": chunk, "variant": name}
        )
        r["dir"] = str(res)
    lim = np.array([args.slices - 1, h - 1, w - 1], np.float64)
    t_len, t_rad = truth["total_length"], truth["mean_radius"]
    t_contacts = truth_contacts(truth["vessels"], lim)
    print(
        f"truth: {len(truth['vessels'])} vessels, centre-line length {t_len:.0f} voxels, mean "
        f"radius {t_rad:.3f}, {truth['crossings']} crossings, {t_contacts} soma contacts"
    )
    rows = []
    for name, r in runs.items():
        s = r["summary"]
        b = np.genfromtxt(Path(r["dir"]) / "branches.csv", delimiter=",", names=True)
        b = np.atleast_1d(b)
        mean_r = float((b["length"] * b["mean_radius"]).sum() / b["length"].sum())
        nz = s["shape"][0]
        row = {
            "run": name,
            "slices": nz,
            "seconds": round(r["seconds"], 1),
            "cpu_seconds": round(r["cpu_seconds"], 1),
            "peak_mib": round(r["peak_mib"]),
            "total_length": round(s["total_length"], 1),
            "mean_radius": round(mean_r, 3),
            "junctions": s["junctions"],
            "end_points": s["end_points"],
            "soma_contacts": s["soma_contacts"],
            "somas_reached": s["somas_reached"],
        }
        if nz == args.slices:
            row["length_error"] = round((s["total_length"] - t_len) / t_len, 4)
            row["radius_error"] = round((mean_r - t_rad) / t_rad, 4)
            row["swc_radius_median_error"] = round(
                swc_radius_error(Path(r["dir"]) / "swc", truth["vessels"]), 4
            )
        rows.append(row)
        print(
            f"{name}: {nz} slices, {row['seconds']} s ({row['cpu_seconds']} s CPU), peak "
            f"{row['peak_mib']} MiB; length "
            f"{row['total_length']}"
            + (
                f" ({row['length_error']:+.1%}), mean radius {mean_r:.3f} "
                f"({row['radius_error']:+.1%}), SWC radius median error "
                f"{row['swc_radius_median_error']:.1%}"
                if "length_error" in row
                else ""
            )
            + f"; {s['junctions']} junctions, {s['end_points']} end points, "
            f"{s['soma_contacts']} soma contacts ({s['somas_reached']} somas)",
            flush=True,
        )
    last, first = rows[-1], rows[-2]
    # the marginal CPU time between the half and the whole volume: start-up (imports, skan's
    # numba compilation) left out; CPU time as the machine may be shared
    extra = (last["slices"] - first["slices"]) * h * w
    per_voxel = (last["cpu_seconds"] - first["cpu_seconds"]) / extra
    area = FULL[1] * FULL[2] / (h * w)
    print(
        f"projected for {FULL[0]}x{FULL[1]}x{FULL[2]} (slabs of {args.chunk}): "
        f"{per_voxel * np.prod(FULL) / 3600:.1f} h of one core at {per_voxel * 1e9:.0f} CPU s "
        "per Gvoxel (marginal, half to whole volume), "
        f"peak memory <= {last['peak_mib'] * area / 1024:.1f} GiB (x{area:.1f} the slice area; "
        f"{rows[-2]['peak_mib']} -> {last['peak_mib']} MiB from {rows[-2]['slices']} to "
        f"{last['slices']} slices)"
    )
    print(json.dumps(rows, indent=2))
    shutil.copy(Path(runs[list(runs)[-1]]["dir"]) / "preview.png", out / "preview.png")
    shutil.rmtree(out / "paths", ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
