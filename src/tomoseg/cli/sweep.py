"""``sweep``: one network per (crop size, crop count) case; table, heatmaps, report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from tomoseg.cli import render
from tomoseg.cli.cancel import cancel_on_interrupt
from tomoseg.cli.options import Address, Backend, Config
from tomoseg.errors import TomosegError

SweepData = Annotated[Path | None, typer.Option(help="Dataset folder (train, val, test).")]
Sizes = Annotated[str, typer.Option(help="Crop sizes, 'full' = whole images.")]
Counts = Annotated[str, typer.Option(help="Crop counts.")]
Repeats = Annotated[int, typer.Option(help="Seeds per cell (mean ± std).")]
Epochs = Annotated[int | None, typer.Option(help="Epochs per case.")]
MaxMinutes = Annotated[float | None, typer.Option(help="Wall-time limit per case.")]
Jobs = Annotated[int, typer.Option(help="Cases run at once (cores or GPUs split).")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Print the plan and a time estimate.")]
RetryFailed = Annotated[bool, typer.Option("--retry-failed", help="Rerun failed cases.")]
New = Annotated[
    bool, typer.Option("--new", help="Start a new folder if --out holds another sweep.")
]
Demo = Annotated[bool, typer.Option("--demo", help="A small grid on the phantom (~10 min on CPU).")]
CpusPerCase = Annotated[int, typer.Option(help="Ray: CPUs per case.")]
GpusPerCase = Annotated[float, typer.Option(help="Ray: GPUs per case.")]


REPORT = (
    "report: {out}/report.html (table: {out}/results.csv, heatmaps: {out}/heatmap_iou.png, "
    "heatmap_bf1.png)"
)


def sweep(
    data: SweepData = None,
    out: Annotated[Path | None, typer.Option(help="Sweep folder.")] = None,
    sizes: Sizes = "100,224,400,800,full",
    counts: Counts = "250,500,1000,2000",
    repeats: Repeats = 1,
    config: Config = None,
    epochs: Epochs = None,
    max_minutes: MaxMinutes = None,
    jobs: Jobs = 1,
    dry_run: DryRun = False,
    retry_failed: RetryFailed = False,
    new: New = False,
    demo: Demo = False,
    backend: Backend = "local",
    address: Address = None,
    cpus_per_case: CpusPerCase = 1,
    gpus_per_case: GpusPerCase = 0,
) -> None:
    """Train and evaluate one network per (crop size, crop count) case; table, heatmaps, report."""
    from tomoseg.experiments.sweep import new_sweep_folder, run_sweep

    if repeats < 1:
        raise TomosegError(f"--repeats must be at least 1, got {repeats}")
    data, out, sizes, counts, cfg = _grid(
        data, out, sizes, counts, demo, config, epochs, max_minutes
    )
    out = new_sweep_folder(out) if new else out
    if dry_run:
        return _dry_run(data, out, cfg, sizes, counts, repeats, jobs)
    render.say(f"report: {out}/report.html (rebuilt after every case; open it any time)")
    _check_backend(backend, address, cpus_per_case, gpus_per_case)
    ray = {"address": address, "cpus_per_case": cpus_per_case, "gpus_per_case": gpus_per_case}
    with render.progress_bar() as show, cancel_on_interrupt() as cancel:
        run_sweep(
            data=data, out=out, cfg=cfg, sizes=sizes, counts=counts, repeats=repeats,
            jobs=jobs, retry_failed=retry_failed, backend=backend, progress=show,
            cancel=cancel, **ray,
        )  # fmt: skip
    render.say(REPORT.format(out=out))


def _grid(
    data: Path | None,
    out: Path | None,
    sizes: str,
    counts: str,
    demo: bool,
    config: Path | None,
    epochs: int | None,
    max_minutes: float | None,
) -> tuple[Path, Path, list[int], list[int], Any]:
    """The data, folder, crop sizes and counts and base config of the sweep (the demo's
    phantom, small grid and small network with ``--demo``)."""
    from tomoseg.config.schema import load_config
    from tomoseg.experiments.cells import parse_counts, parse_sizes

    config_over: dict[str, Any] = {}
    if demo:
        from tomoseg.experiments.demo import sweep_demo_setup

        show = render.ProgressRenderer(render.console)
        data, out, sizes, counts, config_over = sweep_demo_setup(out, progress=show)
    elif data is None or out is None:
        raise TomosegError("give --data DIR and --out DIR (or --demo)")
    overrides = {**config_over, "epochs": epochs, "max_minutes": max_minutes}
    cfg = load_config(path=config, overrides=overrides)
    return data, out, parse_sizes(sizes), parse_counts(counts), cfg


def _check_backend(backend: str, address: str | None, cpus: int, gpus: float) -> None:
    """Refuse Ray's options without ``--backend ray``; check Ray is installed for it."""
    if backend not in ("local", "ray"):
        raise TomosegError(f"--backend must be local or ray, got {backend!r}")
    if backend == "local" and (address or cpus != 1 or gpus):
        raise TomosegError("--address, --cpus-per-case and --gpus-per-case need --backend ray")
    if backend == "ray":
        from tomoseg.runtime.ray_session import require_ray

        require_ray()


def _dry_run(data, out, cfg, sizes: list[int], counts: list[int], repeats: int, jobs: int):
    """``--dry-run``: print the plan, each case's estimated minutes and the total."""
    from tomoseg.experiments.cells import plan_cases, size_label
    from tomoseg.experiments.sweep import estimate_seconds

    cases = plan_cases(sizes, counts, repeats, cfg.seed)
    render.say(
        f"plan: {len(cases)} cases ({len(sizes)} sizes x {len(counts)} counts x {repeats} "
        f"repeats), {cfg.epochs} epochs each, into {out}"
    )
    est = estimate_seconds(data, cfg, sizes, counts, repeats)
    for c in cases:
        render.say(
            f"  {c.id:22s} size {size_label(c.size):>5s}  count {c.count:5d}  seed {c.seed}  "
            f"~{est.per_case[c.id] / 60:.1f} min"
        )
    hours = est.total / 3600
    render.say(
        f"estimated total: {hours:.2f} h with --jobs 1 (about {hours / max(jobs, 1):.2f} h "
        f"with --jobs {jobs} if cores allow)"
    )
    render.say("based on:")
    for line in est.basis:
        render.say(f"  {line}")
