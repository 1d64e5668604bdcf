"""Seconds per slice and peak memory: ``segment_stack`` (reader/writer threads around the model)
versus the serial ``tomoseg predict`` path (read, ``infer.segment``, write, one slice at a time).

Each variant runs in its own process so that its peak RSS is its own. The model is the default
configuration's network with random weights (speed does not depend on the weights).

    python bench/bench_stack.py                       # N = 10 and 40 slices of 2300x1920
    python bench/bench_stack.py --n 100 400 --predict-n 20   # the issue's CPU targets
    python bench/bench_stack.py --n 100 400 --gpu     # on a GPU
    python bench/bench_stack.py --n 2 --shape 512x512 --width 8   # a smoke test

``--cli-n K`` also times K separate ``tomoseg predict`` commands, one slice each (what a user
scripting the CLI slice by slice pays: a process, imports and a model load per slice).
``--predict-n K`` times the serial baseline on the first K slices only (its seconds per slice do
not depend on N). ``--io`` adds the pipeline with the network replaced by a threshold of the
normalised slice: the reading + normalising + writing ceiling in slices per second, which bounds
a GPU run on this machine's CPU. ``--io-only`` runs only that.

``--io-workers W...`` runs the stack (and ``--io``) variants once per value of ``io_workers``
(0 = reader/writer threads, N = N worker processes, ``auto`` = the default), interleaved, and
``--repeat R`` repeats the whole interleaved sequence (timings on a shared machine are noisy:
compare within one run). Peak memory is the benchmark process's own and, for the worker
processes, the largest sum of resident memory over the process tree seen while it ran
(``tree_mib``; shared memory counts once per process that maps it: an upper bound). CPU time
per slice is given for the process that runs the model (what the GIL serialises; including the
call's start-up) and for its child processes (sampled every 0.25 s: a slight underestimate);
unlike slices per second it barely depends on what else runs on the machine.

    python bench/bench_stack.py --io-only --n 200 --io-workers 0 2 --repeat 3   # CPU ceiling
    python bench/bench_stack.py --gpu --n 200 --io-workers 0 2 4 --batch-slices 4
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _worker import in_subprocess, parse_or_serve, peak_rss_mib


def make_run(path: Path, width: int) -> Path:
    """A run folder holding the default network with random weights."""
    import torch
    from safetensors.torch import save_file

    from tomoseg.config.schema import TrainConfig
    from tomoseg.io.writers import write_json
    from tomoseg.models.registry import build_model
    from tomoseg.runtime.checkpoint import RUN_FILE, weights_metadata

    cfg = TrainConfig(width=width)
    torch.manual_seed(0)
    spec = {
        "name": cfg.model,
        "in_channels": 1,
        "num_classes": 2,
        "width": width,
        "depth": cfg.depth,
    }
    model = build_model(**spec)
    meta = {
        "model": spec,
        "classes": ["background", "fg"],
        "class_of_interest": "fg",
        "normalization": {"lower": 0.0, "upper": 65535.0},
        "config": cfg.model_dump(mode="json"),
    }
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path / "best.safetensors"), metadata=weights_metadata(meta))
    write_json(path / RUN_FILE, meta)
    return path


def make_slices(folder: Path, n: int, shape: tuple[int, int]) -> Path:
    import numpy as np
    import tifffile

    rng = np.random.default_rng(0)
    base = (rng.random(shape) * 20000 + 20000).astype(np.uint16)
    folder.mkdir(parents=True, exist_ok=True)
    for z in range(n):
        tifffile.imwrite(folder / f"z{z:05d}.tif", np.roll(base, 7 * z, axis=1))
    return folder


def tree_now(root: int, cpu: dict[int, float]) -> float:
    """Resident memory of ``root`` and all its descendants now, MiB (Linux /proc; else 0);
    records each descendant's CPU seconds so far (user + system) in ``cpu``."""
    kids: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    ticks: dict[int, float] = {}
    page, hz = os.sysconf("SC_PAGE_SIZE"), os.sysconf("SC_CLK_TCK")
    for d in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        pid = int(d)
        kids.setdefault(int(fields[1]), []).append(pid)
        rss[pid] = int(fields[21]) * page
        ticks[pid] = (int(fields[11]) + int(fields[12])) / hz
    total, todo = 0, [root]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        if p != root:
            cpu[p] = max(cpu.get(p, 0.0), ticks.get(p, 0.0))
        todo += kids.get(p, [])
    return total / 2**20


def worker(spec: dict) -> dict:
    """Run one variant in this process; return seconds and peak RSS."""
    import torch

    from tomoseg.inference.predict import predict_paths
    from tomoseg.inference.predictor import InferenceSettings

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device = "gpu" if spec["gpu"] else "cpu"
    peak = [0.0]
    running = threading.Event()
    running.set()

    cpu: dict[int, float] = {}  # descendants' CPU seconds (sampled: a slight underestimate)

    def sample() -> None:
        while running.is_set():
            peak[0] = max(peak[0], tree_now(os.getpid(), cpu))
            time.sleep(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    marks: list[tuple[float, int]] = []  # (time, slices finished): the steady rate

    def progress(event) -> None:  # a ProgressEvent per finished slice
        if event.kind == "advance":
            marks.append((time.perf_counter(), event.done))

    opts = {
        "io_workers": spec.get("io_workers"),
        "batch_slices": spec.get("batch", 1),
        "progress": progress,
    }
    t0 = time.perf_counter()
    own0 = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
    if spec["variant"] == "io":
        import numpy as np

        from tomoseg.data.normalization import normalize
        from tomoseg.inference import stack, stack_executors

        def threshold(run, images):  # no network: what reading, normalising, writing cost
            out = []
            for im in images:  # with io workers, normalize passes their normalised slice through
                x = normalize(im, run.run.normalization)
                out.append((x > np.median(x[::16, ::16])).astype(np.uint8))
            return out

        stack_executors.segment_many = threshold
        stack.segment_stack(
            spec["run"],
            spec["input"],
            spec["out"],
            settings=InferenceSettings(device="cpu"),
            overwrite=True,
            **opts,
        )
    elif spec["variant"] == "stack":
        from tomoseg.inference.stack import segment_stack

        segment_stack(
            spec["run"],
            spec["input"],
            spec["out"],
            settings=InferenceSettings(device=device),
            overwrite=True,
            **opts,
        )
    else:
        src = Path(spec["input"])
        files = sorted(src.iterdir())[: spec["limit"]]
        predict_paths(
            Path(spec["run"]),
            files,
            Path(spec["out"]),
            settings=InferenceSettings(device=device),
            format="tif",
            overwrite=True,
        )
    seconds = time.perf_counter() - t0
    own = sum(resource.getrusage(resource.RUSAGE_SELF)[:2]) - own0
    running.clear()
    sampler.join()
    steady = None
    if len(marks) > 2:  # from the first finished slice to the last: no start-up costs
        (t1, d1), (t2, d2) = marks[0], marks[-1]
        steady = (d2 - d1) / (t2 - t1) if t2 > t1 else None
    return {
        "seconds": seconds,
        "peak_mib": peak_rss_mib(),
        "tree_mib": peak[0],
        "steady": steady,
        "cpu_own": own,
        "cpu_children": sum(cpu.values()),
    }


def cli_per_slice(run: Path, src: Path, out: Path, k: int, gpu: bool) -> float:
    """Seconds per slice of ``tomoseg predict RUN SLICE`` run as its own command, slice by slice."""
    files = sorted(src.iterdir())[:k]
    t0 = time.perf_counter()
    for f in files:
        cmd = [sys.executable, "-m", "tomoseg.cli", "predict", str(run), str(f)]
        cmd += ["--out", str(out), "--format", "tif", "--device", "gpu" if gpu else "cpu"]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"tomoseg predict failed: {proc.stderr[-2000:]}")
    seconds = (time.perf_counter() - t0) / len(files)
    shutil.rmtree(out, ignore_errors=True)
    return seconds


def workers_value(text: str) -> int | None:
    return None if text == "auto" else int(text)


def label(variant: str, w: int | None) -> str:
    if variant == "predict":
        return "predict"
    return f"{variant}[{'auto' if w is None else w}]"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[10, 40], help="slice counts")
    ap.add_argument("--width", type=int, default=32, help="network width (default config: 32)")
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--predict-n", type=int, default=0, help="baseline on this many slices (0: N)")
    ap.add_argument("--cli-n", type=int, default=0, help="also time K one-slice CLI calls")
    ap.add_argument("--io", action="store_true", help="also time reading + writing alone")
    ap.add_argument("--io-only", action="store_true", help="only time reading + writing alone")
    ap.add_argument(
        "--io-workers",
        type=workers_value,
        nargs="+",
        default=[0],
        help="io_workers values for the stack and io variants (0 = threads, auto = default)",
    )
    ap.add_argument("--batch-slices", type=int, default=1, help="slices per forward pass")
    ap.add_argument("--repeat", type=int, default=1, help="repeat the interleaved variants")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = parse_or_serve(ap, argv, worker)
    if args is None:
        return 0
    h, w = args.hw
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        root = Path(tmp)
        run = make_run(root / "run", args.width)
        results = []
        for n in args.n:
            src = make_slices(root / f"in{n}", n, (h, w))
            row: dict = {"slices": n, "shape": [h, w]}
            plan: list[tuple[str, int | None]] = []
            if not args.io_only:
                plan += [("predict", 0)] + [("stack", iw) for iw in args.io_workers]
            if args.io or args.io_only:
                plan += [("io", iw) for iw in args.io_workers]
            times: dict[str, list[float]] = {}
            rates: dict[str, list[float]] = {}
            for _ in range(args.repeat):
                for variant, iw in plan:
                    k = min(n, args.predict_n or n) if variant == "predict" else n
                    out = root / f"out_{variant}{n}"
                    r = in_subprocess(
                        __file__,
                        {
                            "variant": variant,
                            "run": str(run),
                            "input": str(src),
                            "out": str(out),
                            "gpu": args.gpu,
                            "threads": args.threads,
                            "limit": k,
                            "io_workers": iw,
                            "batch": args.batch_slices,
                        },
                    )
                    key = label(variant, iw)
                    times.setdefault(key, []).append(r["seconds"] / k)
                    rates.setdefault(key, []).append(r["steady"] or 0.0)
                    row[key] = {
                        "slices": k,
                        "s_per_slice": round(statistics.median(times[key]), 4),
                        "runs_s_per_slice": [round(t, 4) for t in times[key]],
                        "steady_slices_per_s": round(statistics.median(rates[key]), 2),
                        "runs_steady": [round(t, 2) for t in rates[key]],
                        "peak_mib": round(r["peak_mib"], 1),
                        "tree_mib": round(r["tree_mib"], 1),
                        "cpu_ms_per_slice_own": round(1000 * r["cpu_own"] / k, 1),
                        "cpu_ms_per_slice_children": round(1000 * r["cpu_children"] / k, 1),
                    }
                    shutil.rmtree(out, ignore_errors=True)
                    print(
                        f"N={n} {key}: {r['seconds'] / k:.4f} s/slice "
                        f"({k / r['seconds']:.1f} slices/s"
                        + (f"; steady {r['steady']:.1f} slices/s" if r["steady"] else "")
                        + f"), CPU per slice {1000 * r['cpu_own'] / k:.1f} ms in this process"
                        f" + {1000 * r['cpu_children'] / k:.1f} ms in its children,"
                        f" peak {r['peak_mib']:.0f} MiB, "
                        f"process tree {r['tree_mib']:.0f} MiB",
                        flush=True,
                    )
            if args.cli_n:
                row["cli"] = {"slices": min(n, args.cli_n)}
                row["cli"]["s_per_slice"] = round(
                    cli_per_slice(run, src, root / "out_cli", row["cli"]["slices"], args.gpu), 4
                )
            shutil.rmtree(src)
            results.append(row)
            if not args.io_only:
                p, s = row["predict"], row[label("stack", args.io_workers[0])]
                row["speedup"] = round(p["s_per_slice"] / s["s_per_slice"], 3)
                if args.cli_n:
                    row["speedup_vs_cli"] = round(row["cli"]["s_per_slice"] / s["s_per_slice"], 3)
                    print(
                        f"N={n}: one `tomoseg predict` per slice ({row['cli']['slices']} calls) "
                        f"{row['cli']['s_per_slice']:.3f} s/slice | segment_stack "
                        f"x{row['speedup_vs_cli']:.2f} faster",
                        flush=True,
                    )
                stacks = " | ".join(
                    f"{label('stack', iw)} {row[label('stack', iw)]['s_per_slice']:.3f} s/slice "
                    f"({1 / row[label('stack', iw)]['s_per_slice']:.1f} slices/s), "
                    f"{row[label('stack', iw)]['peak_mib']:.0f} MiB"
                    for iw in args.io_workers
                )
                print(
                    f"N={n} {w}x{h}: predict ({p['slices']} slices) {p['s_per_slice']:.3f} "
                    f"s/slice, {p['peak_mib']:.0f} MiB | {stacks} | stack x{row['speedup']:.2f} "
                    "faster than predict",
                    flush=True,
                )
            for variant in ("stack", "io"):
                keys = [label(variant, iw) for iw in args.io_workers if label(variant, iw) in row]
                if len(keys) > 1:
                    base = row[keys[0]]["s_per_slice"]
                    print(
                        f"N={n} {variant} ({'network' if variant == 'stack' else 'threshold'}, "
                        f"median of {args.repeat}): "
                        + " | ".join(
                            f"{k} {1 / row[k]['s_per_slice']:.1f} slices/s "
                            f"(x{base / row[k]['s_per_slice']:.2f}; steady "
                            f"{row[k]['steady_slices_per_s']:.1f}, "
                            f"x{row[k]['steady_slices_per_s'] / max(row[keys[0]]['steady_slices_per_s'], 1e-9):.2f})"
                            for k in keys
                        ),
                        flush=True,
                    )
                elif keys and variant == "io":
                    print(f"N={n} io alone {1 / row[keys[0]]['s_per_slice']:.1f} slices/s")
        key = label("stack", args.io_workers[0])
        if len(results) > 1 and not args.io_only:
            a, b = results[0], results[-1]
            print(
                f"N {a['slices']} -> {b['slices']}: segment_stack seconds per slice "
                f"x{b[key]['s_per_slice'] / a[key]['s_per_slice']:.3f}, peak memory "
                f"x{b[key]['peak_mib'] / a[key]['peak_mib']:.3f}",
                flush=True,
            )
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
