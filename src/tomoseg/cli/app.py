"""The ``tomoseg`` command line (typer + rich).

Every user-facing problem becomes one ``error: ...`` line on stderr and a non-zero exit status;
``--debug`` (anywhere on the command line) shows the traceback instead.
"""

from __future__ import annotations

import re
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from typer.exceptions import Abort, Exit, TyperException

from tomoseg import __version__
from tomoseg.errors import TomosegError, TomosegWarning

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train CNNs on random crops of large grayscale images, score and segment them.",
)
console = Console()
err_console = Console(stderr=True)

Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace results already in --out.")]
Nonfinite = Annotated[
    str,
    typer.Option(
        help="NaN/infinite pixels: 'background' (outside the field of view: class 0) or 'error'."
    ),
]

Tta = Annotated[
    str | None,
    typer.Option(
        help="Test-time augmentation: none, flips (4 passes), all (8 symmetries) or a list "
        "like identity,flip_x (default: the run's setting, none unless trained with --tta)."
    ),
]
Weights = Annotated[
    str | None,
    typer.Option(
        help="Weights: last (end of the schedule) or best (highest validation IoU of the class "
        "of interest) (default: the run's setting, last unless trained with --weights best)."
    ),
]
NoPostprocess = Annotated[
    bool,
    typer.Option(
        "--no-postprocess",
        help="Skip the decision and clean-up tuned on validation (the run's decision.json).",
    ),
]


def _settings(**options):
    """The inference settings of a command's options (``no_postprocess`` inverted)."""
    from tomoseg.inference.predictor import InferenceSettings

    options["postprocess"] = not options.pop("no_postprocess", False)
    return InferenceSettings(**options)


@app.command()
def version() -> None:
    """Print the tomoseg version."""
    console.print(__version__)


@app.command()
def score(
    pred: Annotated[Path, typer.Option(help="Folder of predicted masks (class ids).")],
    truth: Annotated[Path, typer.Option(help="Folder of true masks, matched by file stem.")],
    out: Annotated[Path, typer.Option(help="Report folder.")],
    classes: Annotated[
        str | None, typer.Option(help="Class names, e.g. 'background,soma'.")
    ] = None,
    class_of_interest: Annotated[str | None, typer.Option(help="Class for overlays/table.")] = None,
    tolerance: Annotated[float, typer.Option(help="BF1 tolerance in pixels.")] = 2.0,
    images: Annotated[Path | None, typer.Option(help="Raw images to show in the panels.")] = None,
    ignore_label: Annotated[
        int | None,
        typer.Option(help="Truth value of unannotated pixels (e.g. 255): left out of scores."),
    ] = None,
    overwrite: Overwrite = False,
) -> None:
    """Score predicted masks against true masks: accuracy, IoU, BF1, overlays."""
    from tomoseg.evaluation.score import score_folders
    from tomoseg.io.datasets import resolve_classes
    from tomoseg.reporting.scores import score_table

    summary = score_folders(
        pred,
        truth,
        out,
        resolve_classes(classes),
        class_of_interest,
        tolerance,
        images,
        overwrite,
        ignore_label=ignore_label,
    )
    console.print(score_table(summary))
    console.print(
        f"report: {out}/metrics.json, {out}/per_image.csv, {out}/overlays/, {out}/panels/"
    )


@app.command()
def check(
    data: Annotated[Path | None, typer.Option(help="Dataset folder with dataset.json.")] = None,
    images: Annotated[
        Path | None, typer.Option(help="Folder of images (instead of --data).")
    ] = None,
    masks: Annotated[Path | None, typer.Option(help="Folder of masks, matched by stem.")] = None,
    ignore_label: Annotated[
        int | None, typer.Option(help="Mask value of unannotated pixels (dataset.json's wins).")
    ] = None,
) -> None:
    """Read every image/mask pair; report shapes, types, class and annotated fractions."""
    from tomoseg.data.check import check_data

    check_data(console, data, images, masks, ignore_label=ignore_label)


@app.command()
def phantom(
    out: Annotated[Path, typer.Option(help="Dataset folder to write.")],
    shape: Annotated[str, typer.Option(help="Slice shape HxW.")] = "1920x2300",
    slices: Annotated[int, typer.Option(help="Number of consecutive slices (>= 3).")] = 12,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    overwrite: Overwrite = False,
) -> None:
    """Write a synthetic tomography dataset: somas (class 1) among look-alike vessels."""
    from tomoseg.synthetic.phantom import generate_phantom, parse_shape

    info = generate_phantom(out, parse_shape(shape), slices, seed, overwrite=overwrite)
    console.print(f"phantom written to {out}: {info}")


@app.command()
def crops(
    data: Annotated[Path, typer.Option(help="Dataset folder with dataset.json.")],
    size: Annotated[int, typer.Option(help="Crop side S in pixels (>= 16).")],
    count: Annotated[int, typer.Option(help="Number of crops N.")],
    out: Annotated[Path, typer.Option(help="Folder for images/, masks/ and crops.csv.")],
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    focus_fraction: Annotated[
        float, typer.Option(help="Fraction centred on the class of interest.")
    ] = 0.0,
    overwrite: Overwrite = False,
) -> None:
    """Export the N random SxS training crops as image/mask pairs for inspection."""
    from tomoseg.data.crops import export_crops

    paths = export_crops(data, size, count, seed, out, focus_fraction, overwrite)
    console.print(f"{len(paths)} crops written to {out}")


def _lines(event) -> None:
    """Print a library job's messages and per-unit summaries, one line each."""
    if event.message and event.kind in ("message", "advance"):
        console.print(event.message, markup=False, highlight=False)


@app.command()
def train(
    out: Annotated[Path, typer.Option(help="Run folder.")],
    data: Annotated[
        Path | None, typer.Option(help="Dataset folder (train split; val split optional).")
    ] = None,
    images: Annotated[
        Path | None, typer.Option(help="Folder of training images (instead of --data).")
    ] = None,
    masks: Annotated[Path | None, typer.Option(help="Folder of their masks, by stem.")] = None,
    classes: Annotated[
        str | None, typer.Option(help="Class names for --images/--masks, e.g. 'bg,cell'.")
    ] = None,
    ignore_label: Annotated[
        int | None,
        typer.Option(help="Mask value of unannotated pixels (where no dataset.json says)."),
    ] = None,
    val_fraction: Annotated[
        float | None,
        typer.Option(help="Share of training images held out without a val split (0.2)."),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML config (or a bundled name: seed, default).")
    ] = None,
    model: Annotated[str | None, typer.Option(help="segnet or unet.")] = None,
    crop_size: Annotated[int | None, typer.Option(help="Crop side S (0 = whole images).")] = None,
    crops: Annotated[int | None, typer.Option(help="Number of crops N.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size.")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or gpu.")] = None,
    precision: Annotated[str | None, typer.Option(help="32 or bf16-mixed.")] = None,
    workers: Annotated[int | None, typer.Option(help="Data-loader workers.")] = None,
    devices: Annotated[
        str | None,
        typer.Option(help="Processes per node, one per GPU (auto = every GPU; on CPU, cores)."),
    ] = None,
    num_nodes: Annotated[int | None, typer.Option(help="Nodes (under srun or torchrun).")] = None,
    strategy: Annotated[
        str | None, typer.Option(help="auto or ddp (DistributedDataParallel over the devices).")
    ] = None,
    max_minutes: Annotated[
        float | None, typer.Option(help="Stop training after this wall time.")
    ] = None,
    loss: Annotated[str | None, typer.Option(help="ce or dice_ce.")] = None,
    class_weights: Annotated[str | None, typer.Option(help="inverse, median or none.")] = None,
    time_budget: Annotated[
        float | None,
        typer.Option(
            help="Minutes for the whole run: a short probe sets the epochs so the schedule "
            "(validation included) ends in time (not with --epochs)."
        ),
    ] = None,
    ema_decay: Annotated[
        str | None,
        typer.Option(
            help="EMA of the weights per step: a decay such as 0.99, auto (0.99 from 500 "
            "steps; default) or off."
        ),
    ] = None,
    weights: Annotated[
        str | None,
        typer.Option(
            help="Weights the run delivers to every command: last (end of the schedule; "
            "default) or best (highest validation IoU of the class of interest)."
        ),
    ] = None,
    context: Annotated[
        int | None,
        typer.Option(
            help="2.5D: also show the network the K slices above and below (datasets that "
            'declare "consecutive": true; stacks). Default 0.'
        ),
    ] = None,
    tta: Annotated[
        str | None,
        typer.Option(help="Default test-time augmentation of the run (none, flips, all, list)."),
    ] = None,
    compile: Annotated[
        str | None,
        typer.Option(
            help="torch.compile the network for training steps: auto (from 300 steps), on, off."
        ),
    ] = None,
    tune_decision: Annotated[
        bool | None,
        typer.Option(
            "--tune-decision/--no-tune-decision",
            help="Tune the decision and clean-up on validation after training (default on).",
        ),
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run.")] = False,
    overwrite: Overwrite = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
) -> None:
    """Train a network on N random SxS crops; write curves, metrics and checkpoints to --out."""
    del quiet  # the epoch lines are printed either way (there is no progress bar to hide)
    from tomoseg.config.schema import load_config
    from tomoseg.data.sources import DataSource
    from tomoseg.training.trainer import is_rank_zero
    from tomoseg.training.trainer import train as run_train

    source = DataSource.of(data, images=images, masks=masks, classes=classes)
    cfg = load_config(
        config,
        dict(  # options left out (None) keep the config's values
            model=model,
            crop_size=crop_size,
            crops=crops,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            device=device,
            precision=precision,
            workers=workers,
            devices=devices,
            num_nodes=num_nodes,
            strategy=strategy,
            max_minutes=max_minutes,
            loss=loss,
            class_weights=class_weights,
            ignore_label=ignore_label,
            val_fraction=val_fraction,
            time_budget=time_budget,
            ema_decay=ema_decay,
            weights=weights,
            context=context,
            tta=tta,
            compile=compile,
            tune_decision=tune_decision,
        ),
    )
    run_train(source, out, cfg, resume=resume, overwrite=overwrite, progress=_lines)
    if is_rank_zero():  # under DDP every process runs this command; rank 0 wrote the run
        console.print(
            f"run written to {out}: metrics.csv, curves.png, best.safetensors, last.safetensors"
        )


@app.command(name="lr-find")
def lr_find(
    data: Annotated[Path, typer.Option(help="Dataset folder.")],
    out: Annotated[Path, typer.Option(help="Folder for lr_find.png and lr_find.csv.")],
    config: Annotated[Path | None, typer.Option(help="YAML config.")] = None,
    min_lr: Annotated[float, typer.Option(help="Lowest learning rate tried.")] = 1e-6,
    max_lr: Annotated[float, typer.Option(help="Highest learning rate tried.")] = 1.0,
    steps: Annotated[int, typer.Option(help="Number of steps.")] = 60,
) -> None:
    """Learning-rate range test: loss against learning rate, with a suggested rate."""
    from tomoseg.config.schema import load_config
    from tomoseg.training.lr_find import lr_range_test

    suggestion = lr_range_test(data, out, load_config(config), min_lr, max_lr, steps)
    if suggestion == suggestion:  # not NaN
        console.print(f"suggested learning rate: {suggestion:.2e} (plot: {out}/lr_find.png)")
    else:
        console.print(f"no clear suggestion (try more --steps); see {out}/lr_find.png")


@app.command()
def predict(
    run: Annotated[Path, typer.Argument(help="Run folder from tomoseg train.")],
    inputs: Annotated[list[Path], typer.Argument(help="Images or folders of images.")],
    out: Annotated[Path, typer.Option(help="Folder for the masks.")],
    fmt: Annotated[str, typer.Option("--format", help="png or tif.")] = "png",
    probabilities: Annotated[
        bool, typer.Option("--probabilities", help="Also write class probabilities.")
    ] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or gpu.")] = "auto",
    tile_size: Annotated[
        int | None, typer.Option(help="Tile side for sliding-window inference.")
    ] = None,
    tile_batch: Annotated[int | None, typer.Option(help="Tiles per forward pass.")] = None,
    no_tiling: Annotated[bool, typer.Option("--no-tiling", help="Whole slices at once.")] = False,
    nonfinite: Nonfinite = "background",
    runtime: Annotated[
        str,
        typer.Option(help="auto, torch, openvino or onnxruntime (auto: fastest measured, torch)."),
    ] = "auto",
    tta: Tta = None,
    no_postprocess: NoPostprocess = False,
    weights: Weights = None,
    overwrite: Overwrite = False,
) -> None:
    """Segment full-size images with a trained run (overlapping tiles, bounded memory)."""
    from tomoseg.inference.predict import predict_paths

    paths = predict_paths(
        run,
        inputs,
        out,
        settings=_settings(
            device=device,
            weights=weights,
            runtime=runtime,
            tta=tta,
            no_postprocess=no_postprocess,
            nonfinite=nonfinite,
            tile_size=tile_size,
            tile_batch=tile_batch,
        ),
        format=fmt,
        probabilities=probabilities,
        tiling=not no_tiling,
        overwrite=overwrite,
        progress=lambda e: console.print(e.message) if e.message and e.kind != "end" else None,
    )
    console.print(f"{len(paths)} masks written to {out}")


@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="Run folder from tomoseg train.")],
    data: Annotated[Path, typer.Option(help="Dataset folder.")],
    out: Annotated[Path, typer.Option(help="Report folder (as tomoseg score writes).")],
    split: Annotated[str, typer.Option(help="Split to evaluate.")] = "test",
    device: Annotated[str, typer.Option(help="auto, cpu or gpu.")] = "auto",
    nonfinite: Nonfinite = "background",
    runtime: Annotated[
        str,
        typer.Option(help="auto, torch, openvino or onnxruntime (auto: fastest measured, torch)."),
    ] = "auto",
    tta: Tta = None,
    no_postprocess: NoPostprocess = False,
    weights: Weights = None,
    overwrite: Overwrite = False,
) -> None:
    """Segment a split's full-size images and score them (accuracy, IoU, BF1, overlays), with
    and without the run's tuned post-processing."""
    from tomoseg.inference.evaluate import evaluate_run
    from tomoseg.reporting.scores import score_table

    summary, sec = evaluate_run(
        run,
        data,
        out,
        settings=_settings(
            device=device,
            weights=weights,
            runtime=runtime,
            tta=tta,
            no_postprocess=no_postprocess,
            nonfinite=nonfinite,
        ),
        split=split,
        overwrite=overwrite,
    )
    console.print(score_table(summary, title=f"{run} on {data} [{split}] (%)"))
    console.print(
        f"{sec:.2f} s per slice; report: {out}/metrics.json, per_image.csv, overlays/, panels/"
    )


@app.command()
def tune(
    run: Annotated[Path, typer.Argument(help="Run folder from tomoseg train.")],
    data: Annotated[Path, typer.Option(help="Dataset folder.")],
    split: Annotated[
        str, typer.Option(help="Split to tune on (default: the run's validation images).")
    ] = "val",
    tta: Tta = None,
    device: Annotated[str, typer.Option(help="auto, cpu or gpu.")] = "auto",
    weights: Weights = None,
) -> None:
    """(Re)tune a run's decision and clean-up on validation images; writes RUN/decision.json."""
    from tomoseg.inference.tuning import tune_run

    decision, report = tune_run(run, data, split=split, tta=tta, device=device, weights=weights)
    b, a = report["before"], report["after"]
    console.print(
        f"decision: offset {decision.offset:+g}, min object {decision.min_size} px, "
        f"max hole {decision.max_hole} px; validation IoU {b['iou']:.3f} -> {a['iou']:.3f}, "
        f"BF1 {b['bf1']:.3f} -> {a['bf1']:.3f} on {report['images']} images "
        f"({report['source']}); written to {run}/decision.json"
    )


@app.command()
def sweep(
    data: Annotated[Path | None, typer.Option(help="Dataset folder (train, val, test).")] = None,
    out: Annotated[Path | None, typer.Option(help="Sweep folder.")] = None,
    sizes: Annotated[
        str, typer.Option(help="Crop sizes, 'full' = whole images.")
    ] = "100,224,400,800,full",
    counts: Annotated[str, typer.Option(help="Crop counts.")] = "250,500,1000,2000",
    repeats: Annotated[int, typer.Option(help="Seeds per cell (mean ± std).")] = 1,
    config: Annotated[Path | None, typer.Option(help="Base YAML config for every case.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs per case.")] = None,
    max_minutes: Annotated[float | None, typer.Option(help="Wall-time limit per case.")] = None,
    jobs: Annotated[int, typer.Option(help="Cases run at once (cores or GPUs split).")] = 1,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan and a time estimate.")
    ] = False,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Rerun failed cases.")
    ] = False,
    new: Annotated[
        bool, typer.Option("--new", help="Start a new folder if --out holds another sweep.")
    ] = False,
    demo: Annotated[
        bool, typer.Option("--demo", help="A small grid on the phantom (~10 min on CPU).")
    ] = False,
    backend: Annotated[
        str, typer.Option(help="local (subprocesses here) or ray (Tune).")
    ] = "local",
    address: Annotated[
        str | None, typer.Option(help="Ray cluster HOST:PORT (default: start Ray here).")
    ] = None,
    cpus_per_case: Annotated[int, typer.Option(help="Ray: CPUs per case.")] = 1,
    gpus_per_case: Annotated[float, typer.Option(help="Ray: GPUs per case.")] = 0,
) -> None:
    """Train and evaluate one network per (crop size, crop count) case; table, heatmaps, report."""
    from tomoseg.config.schema import load_config
    from tomoseg.experiments.cells import parse_counts, parse_sizes, plan_cases, size_label
    from tomoseg.experiments.sweep import estimate_seconds, new_sweep_folder, run_sweep

    if demo:
        from tomoseg.experiments.demo import sweep_demo_setup

        data, out, sizes, counts, config_over = sweep_demo_setup(out, console)
    else:
        config_over = {}
        if data is None or out is None:
            raise TomosegError("give --data DIR and --out DIR (or --demo)")
    size_list, count_list = parse_sizes(sizes), parse_counts(counts)
    if repeats < 1:
        raise TomosegError(f"--repeats must be at least 1, got {repeats}")
    cfg = load_config(config, {**config_over, "epochs": epochs, "max_minutes": max_minutes})
    if new:
        out = new_sweep_folder(out)
    if dry_run:
        cases = plan_cases(size_list, count_list, repeats, cfg.seed)
        console.print(
            f"plan: {len(cases)} cases ({len(size_list)} sizes x {len(count_list)} counts x {repeats} repeats), {cfg.epochs} epochs each, into {out}"
        )
        est = estimate_seconds(data, cfg, size_list, count_list, repeats)
        total, per_case = est.total, est.per_case
        for c in cases:
            console.print(
                f"  {c.id:22s} size {size_label(c.size):>5s}  count {c.count:5d}  seed {c.seed}  ~{per_case[c.id] / 60:.1f} min"
            )
        console.print(
            f"estimated total: {total / 3600:.2f} h with --jobs 1 (about {total / 3600 / max(jobs, 1):.2f} h with --jobs {jobs} if cores allow)"
        )
        console.print("based on:", markup=False)
        for line in est.basis:
            console.print(f"  {line}", markup=False, highlight=False)
        return
    console.print(f"report: {out}/report.html (rebuilt after every case; open it any time)")
    if backend not in ("local", "ray"):
        raise TomosegError(f"--backend must be local or ray, got {backend!r}")
    if backend == "local" and (address or cpus_per_case != 1 or gpus_per_case):
        raise TomosegError("--address, --cpus-per-case and --gpus-per-case need --backend ray")
    if backend == "ray":
        from tomoseg.runtime.ray_session import require_ray

        require_ray()
    run_sweep(
        data,
        out,
        cfg,
        size_list,
        count_list,
        repeats,
        jobs,
        retry_failed,
        backend=backend,
        address=address,
        cpus_per_case=cpus_per_case,
        gpus_per_case=gpus_per_case,
        progress=_lines,
    )
    console.print(
        f"report: {out}/report.html (table: {out}/results.csv, heatmaps: {out}/heatmap_iou.png, heatmap_bf1.png)"
    )


@contextmanager
def _slice_bar():
    """A rich progress bar fed by a library job's ProgressEvents (slices done / total, rate,
    time left); yields the callback."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    cols = (
        TextColumn("slices"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
    )
    with Progress(*cols, console=console, transient=False) as bar:
        task = bar.add_task("segment", total=None, rate="")
        start = 0  # slices finished before this call (a resume): not counted in the rate

        def show(event) -> None:
            nonlocal start
            if event.kind == "message":
                console.print(event.message)
                return
            if event.kind == "start":
                start = event.done
            here = event.done - start
            rate = f"{here / event.elapsed:.2f} slices/s" if event.elapsed > 0 and here else ""
            bar.update(task, completed=event.done, total=event.total, rate=rate)

        yield show


@app.command(name="segment-stack")
def segment_stack_cmd(
    run: Annotated[Path, typer.Argument(help="Run folder from tomoseg train.")],
    input: Annotated[
        Path, typer.Argument(help="Folder of slices, multi-page TIFF or Zarr volume.")
    ],
    out: Annotated[Path, typer.Option(help="Output folder (labels.zarr or labels/, stack.json).")],
    fmt: Annotated[str, typer.Option("--format", help="ome-zarr or tiff.")] = "ome-zarr",
    voxel_size: Annotated[
        str | None, typer.Option(help="z,y,x voxel size (default: input's).")
    ] = None,
    unit: Annotated[
        str | None, typer.Option(help="Unit of the voxel size, e.g. micrometer.")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or gpu.")] = "auto",
    batch_slices: Annotated[int, typer.Option(help="Slices per forward pass (GPU).")] = 1,
    io_workers: Annotated[
        int | None,
        typer.Option(
            help="Processes that read+normalise and write slices (0: threads; default: 0 on "
            "CPU or <= 2 cores, else min(4, cores-2)).",
        ),
    ] = None,
    allow_gaps: Annotated[
        bool,
        typer.Option("--allow-gaps", help="Accept numbered slice files with holes (sub-sampled)."),
    ] = False,
    channel: Annotated[
        int | None, typer.Option(help="Channel of a hyperstack / OME file with C > 1 (from 0).")
    ] = None,
    time: Annotated[
        int | None, typer.Option(help="Time point of a file with T > 1 (from 0).")
    ] = None,
    nonfinite: Nonfinite = "background",
    part: Annotated[
        str | None,
        typer.Option(help="I/N: only part I of N (job arrays), into the same --out."),
    ] = None,
    verify: Annotated[
        bool, typer.Option("--verify", help="Only check every slice is done (lists missing).")
    ] = False,
    backend: Annotated[str, typer.Option(help="local (threads here) or ray (actors).")] = "local",
    address: Annotated[
        str | None, typer.Option(help="Ray cluster HOST:PORT (default: start Ray here).")
    ] = None,
    actors: Annotated[
        int | None, typer.Option(help="Ray: actors (default: one per GPU, else 1).")
    ] = None,
    cpus_per_actor: Annotated[int, typer.Option(help="Ray: CPUs per actor.")] = 1,
    runtime: Annotated[
        str,
        typer.Option(help="auto, torch, openvino or onnxruntime (auto: fastest measured, torch)."),
    ] = "auto",
    tta: Tta = None,
    no_postprocess: NoPostprocess = False,
    weights: Weights = None,
    overwrite: Overwrite = False,
) -> None:
    """Segment a whole stack with bounded memory; rerun the same command to resume."""
    from tomoseg.inference.stack import segment_stack

    if fmt not in ("ome-zarr", "zarr", "tiff"):
        raise TomosegError(f"--format must be ome-zarr or tiff, got {fmt!r}")
    with _slice_bar() as progress:
        info = segment_stack(
            run, input, out, fmt="tiff" if fmt == "tiff" else "zarr", voxel_size=voxel_size,
            unit=unit, overwrite=overwrite, batch_slices=batch_slices, allow_gaps=allow_gaps,
            settings=_settings(
                device=device, weights=weights, runtime=runtime, tta=tta,
                no_postprocess=no_postprocess, nonfinite=nonfinite,
            ),
            channel=channel, time=time, part=part, verify=verify, backend=backend,
            io_workers=io_workers, address=address, actors=actors,
            cpus_per_actor=cpus_per_actor, progress=progress,
        )  # fmt: skip
    if verify:
        console.print(f"complete: all {info['stack_slices']} slices finished in {info['volume']}")
        return
    rate = info["slices_per_second"] or 0.0
    where = ""
    if info.get("part"):
        span = f"{info['first']}-{info['last']}" if info["slices"] else "none"
        where = f"part {info['part']} (slices {span} of {info['stack_slices']}): "
    console.print(
        f"{where}{info['slices']} slices ({info['computed']} computed, {info['skipped']} already done) in "
        f"{info['seconds']:.1f} s, {rate:.2f} slices/s -> {info['volume']}"
    )
    if info.get("part"):
        console.print(
            "the whole stack is complete"
            if info["complete"]
            else f"{info['missing']} slices of the stack still missing (other parts)"
        )
    bad = info.get("nonfinite") or {}
    if bad.get("pixels"):
        console.print(
            f"{bad['pixels']} non-finite (NaN or infinite) pixels in {bad['slices']} of "
            f"{info['slices']} slices labelled background (outside the field of view); "
            "per slice in stack.json"
        )


@app.command()
def objects(
    volume: Annotated[Path, typer.Argument(help="Output folder of segment-stack (or its volume).")],
    out: Annotated[Path, typer.Option(help="Folder for objects.csv, summary, meshes, preview.")],
    class_name: Annotated[str | None, typer.Option("--class", help="Class to analyse.")] = None,
    connectivity: Annotated[int, typer.Option(help="6, 18 or 26.")] = 26,
    min_volume: Annotated[int, typer.Option(help="Remove objects below this many voxels.")] = 0,
    truth: Annotated[
        Path | None, typer.Option(help="3D truth labels (e.g. phantom truth3d/labels.tif).")
    ] = None,
    chunk_slices: Annotated[
        int | None, typer.Option(help="Label slab by slab (bounded memory).")
    ] = None,
    meshes: Annotated[int, typer.Option(help="Meshes for the N largest objects.")] = 20,
    overwrite: Overwrite = False,
) -> None:
    """3D objects of a class: counts, volumes, shapes, meshes, preview (and detection scores)."""
    from tomoseg.evaluation.objects import analyze_objects

    if connectivity not in (6, 18, 26):
        raise TomosegError(f"--connectivity must be 6, 18 or 26, got {connectivity}")
    s = analyze_objects(
        volume,
        out,
        class_name,
        connectivity,
        min_volume,
        truth,
        chunk_slices,
        meshes,
        overwrite=overwrite,
    )
    console.print(
        f"{s['count']} objects; table {out}/objects.csv, summary {out}/summary.json, meshes {out}/meshes/"
    )
    det = s.get("detection")
    if det:
        console.print(
            "vs truth: "
            + ", ".join(
                f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in det.items()
            )
        )


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo's outputs.")] = Path(
        "tomoseg-demo"
    ),
    overwrite: Overwrite = True,
    stack: Annotated[
        bool, typer.Option("--stack", help="Whole-stack segmentation and 3D objects.")
    ] = False,
) -> None:
    """Run the whole job on an embedded synthetic phantom (no data needed)."""
    from tomoseg.experiments.demo import run_demo, run_stack_demo

    if stack:
        run_stack_demo(
            out if out != Path("tomoseg-demo") else Path("tomoseg-stack-demo"),
            console,
            overwrite=overwrite,
        )
    else:
        run_demo(out, console, overwrite=overwrite)


@app.command(name="cluster-script")
def cluster_script(
    scheduler: Annotated[str, typer.Argument(help="slurm or pbs.")],
    command: Annotated[
        list[str] | None,
        typer.Argument(help="The tomoseg command to run, after -- (e.g. -- tomoseg train ...)."),
    ] = None,
    nodes: Annotated[int, typer.Option(help="Nodes M.")] = 1,
    gpus_per_node: Annotated[int, typer.Option(help="GPUs G per node (0: CPU nodes).")] = 1,
    time: Annotated[str, typer.Option(help="Wall time HH:MM:SS or D-HH:MM:SS.")] = "01:00:00",
    partition: Annotated[str | None, typer.Option(help="Slurm partition.")] = None,
    queue: Annotated[str | None, typer.Option(help="PBS queue.")] = None,
    account: Annotated[str | None, typer.Option(help="Account to charge.")] = None,
    env: Annotated[
        str | None, typer.Option(help="Shell line that activates the environment.")
    ] = None,
    array: Annotated[
        int | None, typer.Option(help="segment-stack: a job array of N parts (--part I/N).")
    ] = None,
    job_name: Annotated[str | None, typer.Option(help="Job name.")] = None,
    out: Annotated[Path | None, typer.Option(help="Write the script here (else print it).")] = None,
    submit: Annotated[bool, typer.Option("--submit", help="Submit it with sbatch / qsub.")] = False,
) -> None:
    """Print (or write) a Slurm / PBS job script that runs a tomoseg command on M nodes x G GPUs."""
    from tomoseg.cluster.jobscript import JobSpec, job_script
    from tomoseg.cluster.jobscript import submit as submit_script
    from tomoseg.io.writers import write_text

    if partition and queue:
        raise TomosegError("give --partition (Slurm) or --queue (PBS), not both")
    spec = JobSpec(
        scheduler=scheduler.lower(),
        command=list(command or []),
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        time=time,
        partition=partition or queue,
        account=account,
        env=env,
        array=array,
        job_name=job_name,
    )
    text = job_script(spec)
    if out is not None:
        write_text(out, text)
        out.chmod(0o755)
        err_console.print(f"job script written to {out}", highlight=False)
    elif not submit:
        sys.stdout.write(text)
    if submit:
        answer = submit_script(spec.scheduler, text, out)
        console.print(answer, markup=False, highlight=False)


def cli_options() -> dict[str, str]:
    """Python parameter name -> command-line option (``tile_size`` -> ``--tile-size``), over
    every command of the app."""
    import typer.main

    names: dict[str, str] = {}
    group = typer.main.get_command(app)
    for cmd in getattr(group, "commands", {}).values():
        for param in cmd.params:
            opts = [o for o in getattr(param, "opts", []) if o.startswith("--")]
            if param.name and opts:
                names.setdefault(param.name, opts[0])
    return names


_ASSIGN = re.compile(r"\b([a-z][a-z0-9_]*)=('[^']*'|\"[^\"]*\"|[^\s,;:)]+)")


def cli_message(message: str) -> str:
    """A library message in the CLI's terms. Library messages name parameters; the command line
    speaks of options: ``overwrite=True`` -> ``--overwrite``, ``nonfinite='error'`` ->
    ``--nonfinite error``, ``tile_size=8`` -> ``--tile-size 8``, ``use overwrite`` -> ``use
    --overwrite``. Only the ``name=value`` form is rewritten, so file keys and plain words that
    happen to share a parameter's name stay as they are."""
    names = cli_options()

    def assign(m: re.Match) -> str:
        word, value = m.group(1), m.group(2).strip("'\"")
        if word not in names:
            return m.group(0)
        return names[word] if value == "True" else f"{names[word]} {value}"

    message = _ASSIGN.sub(assign, message)
    return re.sub(r"\buse overwrite\b", "use --overwrite", message)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings for the user (TomosegWarning) as one ``warning:`` line; others as usual."""
    if issubclass(category, TomosegWarning):
        err_console.print(
            f"warning: {cli_message(str(message))}", markup=False, highlight=False, soft_wrap=True
        )
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning expected failures into one ``error:`` line."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    with warnings.catch_warnings():
        warnings.simplefilter("always", TomosegWarning)
        warnings.showwarning = _show_warning
        return _main(args, debug)


def _main(args: list[str], debug: bool) -> int:
    try:
        code = app(args=args, prog_name="tomoseg", standalone_mode=False)
    except TomosegError as exc:
        if debug:
            raise
        err_console.print(
            f"error: {cli_message(str(exc))}", markup=False, highlight=False, soft_wrap=True
        )
        return 1
    except Exit as exc:
        return exc.exit_code
    except (Abort, KeyboardInterrupt):
        err_console.print("error: interrupted", markup=False)
        return 130
    except TyperException as exc:
        if debug:
            raise
        msg = exc.format_message().replace("\n", " ")
        err_console.print(f"error: {msg}", markup=False, highlight=False, soft_wrap=True)
        return exc.exit_code or 2
    except MemoryError:
        if debug:
            raise
        err_console.print(
            "error: out of memory (try a smaller --batch-size or tile size)", markup=False
        )
        return 1
    except OSError as exc:
        if debug:
            raise
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        err_console.print(
            f"error: {exc.strerror or exc}{where}", markup=False, highlight=False, soft_wrap=True
        )
        return 1
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
