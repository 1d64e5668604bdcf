"""What the benchmarks share: run one measurement in a fresh process, so that its peak memory is
its own, and read that peak.

A benchmark script calls ``in_subprocess(__file__, spec)``; the child runs
``python SCRIPT --worker JSON`` and prints its result as the last line of JSON.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from typing import Any


def in_subprocess(script: str, spec: dict) -> dict:
    """Run ``script --worker JSON(spec)`` in a new Python process.

    Args:
        script: the benchmark file (its ``__file__``).
        spec: what to measure, as JSON-serialisable values.

    Returns:
        The dict the worker printed as its last stdout line; exits with the worker's stderr tail
        when it failed.
    """
    proc = subprocess.run(
        [sys.executable, script, "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{spec.get('variant', 'worker')} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def parse_or_serve(ap: argparse.ArgumentParser, argv: list[str] | None, worker) -> Any:
    """Add the options every benchmark has (``--shape``, ``--tmp``, the hidden ``--worker``) and
    parse; in a worker process, run ``worker(spec)`` and print its result instead.

    Args:
        ap: the benchmark's parser, with its own options already added.
        argv: command-line arguments (None: ``sys.argv``).
        worker: the function that measures one spec in this process.

    Returns:
        The parsed arguments, with ``args.hw`` = (H, W) from ``--shape``; None in a worker.
    """
    from tomoseg.synthetic.phantom import parse_shape

    ap.add_argument("--shape", default="1920x2300", help="slice HxW")
    ap.add_argument("--tmp", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return None
    args.hw = parse_shape(args.shape)
    return args
