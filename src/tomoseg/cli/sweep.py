"""``sweep``: one network per (crop size, crop count) case; table, heatmaps, report."""

from __future__ import annotations

import inspect
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any

import typer

from tomoseg.cli import render
from tomoseg.cli.cancel import cancel_on_interrupt
from tomoseg.cli.options import (
    Address,
    Backend,
    Classes,
    Config,
    IgnoreLabel,
    Images,
    ImageSuffix,
    Instances,
    Masks,
    MaskSuffix,
    data_source,
)
from tomoseg.errors import TomosegError
from tomoseg.utils.format import plural

SweepData = Annotated[
    Path | None,
    typer.Option(
        "--data", help="Dataset folder (train, val, test; or --images/--masks with --test-images)."
    ),
]
Sizes = Annotated[str, typer.Option(help="Crop sizes, 'full' = whole images.")]
Counts = Annotated[str, typer.Option(help="Crop counts.")]
Repeats = Annotated[int, typer.Option(help="Seeds per cell (mean ± std).")]
#: epochs of each case where neither ``--epochs`` nor ``--config`` says
SWEEP_EPOCHS = 24
Epochs = Annotated[
    int | None,
    typer.Option(help=f"Epochs per case (default {SWEEP_EPOCHS}, or the --config file's)."),
]
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


TestImages = Annotated[
    Path | None,
    typer.Option(help="Test images each case is scored on (with --images/--masks)."),
]
TestMasks = Annotated[
    Path | None, typer.Option(help="Their masks, matched as --masks are (with --test-images).")
]

ValFraction = Annotated[
    float | None,
    typer.Option(
        help="Share of the training images held out for validation where there is no val "
        "split (--images/--masks; as train, default the config's)."
    ),
]

#: ``sweep``'s options, in order (name: annotation, default); the data options are ``train``'s
SWEEP_OPTIONS: dict[str, tuple[Any, Any]] = {
    "data": (SweepData, None),
    "out": (Annotated[Path | None, typer.Option(help="Sweep folder.")], None),
    "images": (Images, None),
    "masks": (Masks, None),
    "test_images": (TestImages, None),
    "test_masks": (TestMasks, None),
    "image_suffix": (ImageSuffix, None),
    "mask_suffix": (MaskSuffix, None),
    "instances": (Instances, None),
    "classes": (Classes, None),
    "ignore_label": (IgnoreLabel, None),
    "val_fraction": (ValFraction, None),
    "sizes": (Sizes, "100,224,400,800,full"),
    "counts": (Counts, "250,500,1000,2000"),
    "repeats": (Repeats, 1),
    "config": (Config, None),
    "epochs": (Epochs, None),
    "max_minutes": (MaxMinutes, None),
    "jobs": (Jobs, 1),
    "dry_run": (DryRun, False),
    "retry_failed": (RetryFailed, False),
    "new": (New, False),
    "demo": (Demo, False),
    "backend": (Backend, "local"),
    "address": (Address, None),
    "cpus_per_case": (CpusPerCase, 1),
    "gpus_per_case": (GpusPerCase, 0),
}


def sweep(**options: Any) -> None:
    """Train and evaluate one network per (crop size, crop count) case; table, heatmaps, report."""
    from tomoseg.experiments.sweep import new_sweep_folder, run_sweep

    o = SimpleNamespace(**options)
    if o.repeats < 1:
        raise TomosegError(f"--repeats must be at least 1, got {o.repeats}")
    data, out, sizes, counts, cfg = _grid(o)
    out = new_sweep_folder(out) if o.new else out
    if o.dry_run:
        return _dry_run(data, out, cfg, sizes, counts, o.repeats, o.jobs)
    render.say(f"report: {out}/report.html (rebuilt after every case; open it any time)")
    _check_backend(o.backend, o.address, o.cpus_per_case, o.gpus_per_case)
    ray = {"address": o.address, "cpus_per_case": o.cpus_per_case,
           "gpus_per_case": o.gpus_per_case}  # fmt: skip
    with render.progress_bar() as show, cancel_on_interrupt() as cancel:
        run_sweep(
            data=data, out=out, cfg=cfg, sizes=sizes, counts=counts, repeats=o.repeats,
            jobs=o.jobs, retry_failed=o.retry_failed, backend=o.backend, progress=show,
            cancel=cancel, **ray,
        )  # fmt: skip
    render.say(REPORT.format(out=out))


sweep.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=a)
        for name, (a, d) in SWEEP_OPTIONS.items()
    ],
    return_annotation=None,
)


def _sweep_data(o: SimpleNamespace) -> Any:
    """The :class:`~tomoseg.experiments.sweep_data.SweepData` of ``--data``, or ``--images`` /
    ``--masks`` with ``--test-images`` / ``--test-masks`` (read as ``train`` and ``evaluate``
    read them)."""
    from tomoseg.experiments.sweep_data import SweepData

    source = data_source(
        o.data, o.images, o.masks, classes=o.classes, image_suffix=o.image_suffix,
        mask_suffix=o.mask_suffix, instances=o.instances,
    )  # fmt: skip
    return SweepData.of(source, o.test_images, o.test_masks)


def _grid(o: SimpleNamespace) -> tuple[Any, Path, list[int], list[int], Any]:
    """The data, folder, crop sizes and counts and base config of the sweep (the demo's
    phantom, small grid and small network with ``--demo``)."""
    from tomoseg.config.schema import load_config
    from tomoseg.experiments.cells import parse_counts, parse_sizes

    config_over: dict[str, Any] = {}
    sizes, counts, out = o.sizes, o.counts, o.out
    if o.demo:
        from tomoseg.experiments.demo import sweep_demo_setup

        show = render.ProgressRenderer(render.console)
        data, out, sizes, counts, config_over = sweep_demo_setup(out, progress=show)
    elif o.out is None or (o.data is None and o.images is None and o.masks is None):
        raise TomosegError("give --data DIR (or --images and --masks) and --out DIR (or --demo)")
    else:
        data = _sweep_data(o)
    epochs = o.epochs
    if epochs is None and o.config is None and "epochs" not in config_over:
        epochs = SWEEP_EPOCHS  # a fixed schedule per case, not train's default time budget
    overrides = {**config_over, "epochs": epochs, "max_minutes": o.max_minutes,
                 "ignore_label": o.ignore_label, "val_fraction": o.val_fraction}  # fmt: skip
    cfg = load_config(path=o.config, overrides=overrides)
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
        f"plan: {plural(len(cases), 'case')} ({plural(len(sizes), 'size')} x "
        f"{plural(len(counts), 'count')} x {plural(repeats, 'repeat')}), "
        f"{plural(cfg.epochs, 'epoch')} each, into {out}"
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
