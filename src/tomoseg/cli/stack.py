"""Whole-stack commands: ``segment-stack``, ``objects``, ``paths`` and ``suggest``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from tomoseg.cli import render
from tomoseg.cli.cancel import cancel_on_interrupt
from tomoseg.cli.options import (
    Address,
    AllowIncomplete,
    Backend,
    Device,
    Intensity,
    Nonfinite,
    NoPostprocess,
    Overwrite,
    RunFolder,
    Runtime,
    Tta,
    Weights,
    inference_settings,
)
from tomoseg.errors import TomosegError

Input = Annotated[
    Path,
    typer.Argument(
        help="Folder of slices, multi-page TIFF, Zarr, HDF5 (FILE:/dataset), MRC or N5."
    ),
]
StackOut = Annotated[Path, typer.Option(help="Output folder (labels.zarr or labels/, stack.json).")]
StackFormat = Annotated[str, typer.Option("--format", help="ome-zarr or tiff.")]
VoxelSize = Annotated[str | None, typer.Option(help="z,y,x voxel size (default: input's).")]
Unit = Annotated[
    str | None,
    typer.Option(
        help="Unit of the voxel size, e.g. nanometer (default: the input's; micrometer for a "
        "given --voxel-size)."
    ),
]
BatchSlices = Annotated[int, typer.Option(help="Slices per forward pass (GPU).")]
IoWorkers = Annotated[
    int | None,
    typer.Option(
        help="Processes that read+normalise and write slices (0: threads; default: 0 on "
        "CPU or <= 2 cores, else min(4, cores-2)).",
    ),
]
AllowGaps = Annotated[
    bool,
    typer.Option("--allow-gaps", help="Accept numbered slice files with holes (sub-sampled)."),
]
Channel = Annotated[
    int | None, typer.Option(help="Channel of a hyperstack / OME file with C > 1 (from 0).")
]
TimePoint = Annotated[int | None, typer.Option(help="Time point of a file with T > 1 (from 0).")]
Dataset = Annotated[
    str | None,
    typer.Option(help="Array in an HDF5/Zarr/N5 container, e.g. /exchange/data (or FILE:/path)."),
]
Transpose = Annotated[
    bool, typer.Option("--transpose", help="Read axes not in z,y,x order (e.g. x,y,z) by name.")
]
Missing = Annotated[
    str, typer.Option(help="Slices with chunks missing from a Zarr/N5/HDF5: warn, error, ignore.")
]
Part = Annotated[
    str | None, typer.Option(help="I/N: only part I of N (job arrays), into the same --out.")
]
Verify = Annotated[
    bool, typer.Option("--verify", help="Only check every slice is done (lists missing).")
]
Actors = Annotated[int | None, typer.Option(help="Ray: actors (default: one per GPU, else 1).")]
CpusPerActor = Annotated[int, typer.Option(help="Ray: CPUs per actor.")]
Uncertainty = Annotated[
    bool,
    typer.Option(
        "--uncertainty",
        help="Also write uncertainty.zarr (entropy of the softmax, 0-1) and a score per slice "
        "in stack.json (for tomoseg suggest).",
    ),
]

Planes = Annotated[
    str,
    typer.Option(
        help="xy (the slices), or xy,xz,yz: also segment the xz and yz planes and label each "
        "voxel by the mean of the class probabilities (voxels within a ratio of 1.2 of cubes).",
    ),
]


def segment_stack(
    run: RunFolder,
    input: Input,
    out: StackOut,
    fmt: StackFormat = "ome-zarr",
    voxel_size: VoxelSize = None,
    unit: Unit = None,
    device: Device = "auto",
    batch_slices: BatchSlices = 1,
    io_workers: IoWorkers = None,
    allow_gaps: AllowGaps = False,
    channel: Channel = None,
    time: TimePoint = None,
    dataset: Dataset = None,
    transpose: Transpose = False,
    missing: Missing = "warn",
    nonfinite: Nonfinite = "background",
    intensity: Intensity = "warn",
    part: Part = None,
    verify: Verify = False,
    backend: Backend = "local",
    address: Address = None,
    actors: Actors = None,
    cpus_per_actor: CpusPerActor = 1,
    runtime: Runtime = "auto",
    tta: Tta = None,
    no_postprocess: NoPostprocess = False,
    weights: Weights = None,
    uncertainty: Uncertainty = False,
    planes: Planes = "xy",
    overwrite: Overwrite = False,
    allow_incomplete: AllowIncomplete = False,
) -> None:
    """Segment a whole stack with bounded memory; rerun the same command to resume."""
    info = _run_stack(dict(locals()))
    for line in render.stack_lines(info, verify=verify):
        render.say(line)


def _run_stack(o: dict[str, Any]) -> dict[str, Any]:
    """The one library call of ``segment-stack``, with a progress bar over the slices (Ctrl-C
    stops after the slices in flight; the same command resumes)."""
    from tomoseg.inference.stack import segment_stack as run_segment_stack

    if o["fmt"] not in ("ome-zarr", "zarr", "tiff"):
        raise TomosegError(f"--format must be ome-zarr or tiff, got {o['fmt']!r}")
    settings = inference_settings(
        device=o["device"], weights=o["weights"], runtime=o["runtime"], tta=o["tta"],
        nonfinite=o["nonfinite"], intensity=o["intensity"],
        no_postprocess=o["no_postprocess"],
        allow_incomplete=o["allow_incomplete"],
    )  # fmt: skip
    with render.progress_bar() as show, cancel_on_interrupt() as cancel:
        return run_segment_stack(
            run=o["run"], input=o["input"], out=o["out"],
            format=o["fmt"], voxel_size=o["voxel_size"],
            unit=o["unit"], overwrite=o["overwrite"], batch_slices=o["batch_slices"],
            allow_gaps=o["allow_gaps"], settings=settings, channel=o["channel"],
            time=o["time"], dataset=o["dataset"], transpose=o["transpose"],
            missing=o["missing"], part=o["part"], verify=o["verify"], backend=o["backend"],
            io_workers=o["io_workers"], address=o["address"], actors=o["actors"],
            cpus_per_actor=o["cpus_per_actor"], uncertainty=o["uncertainty"],
            planes=o["planes"], progress=show, cancel=cancel,
        )  # fmt: skip


ObjVolume = Annotated[Path, typer.Argument(help="Output folder of segment-stack (or its volume).")]
ObjOut = Annotated[Path, typer.Option(help="Folder for objects.csv, summary, meshes, preview.")]
ObjClass = Annotated[str | None, typer.Option("--class", help="Class to analyse.")]
Truth = Annotated[
    Path | None, typer.Option(help="3D truth instance labels (e.g. phantom truth3d/labels.tif).")
]
ChunkSlices = Annotated[int | None, typer.Option(help="Label slab by slab (bounded memory).")]
Split = Annotated[
    bool,
    typer.Option(
        "--split",
        help="Tell touching objects apart (seeded watershed on the distance transform).",
    ),
]
SplitH = Annotated[
    float | None,
    typer.Option(
        help="--split: smallest height of a body's centre above the neck to its neighbour, in "
        "the voxel size's unit (default: 0.05 x the typical object radius)."
    ),
]
SplitMinDistance = Annotated[
    float | None,
    typer.Option(
        help="--split: merge seeds closer than this, in the voxel size's unit (default: 0.5 x "
        "the typical object radius)."
    ),
]
ObjVoxelSize = Annotated[
    str | None, typer.Option(help="z,y,x voxel size (default: the volume's; else in voxels).")
]


def objects(
    volume: ObjVolume,
    out: ObjOut,
    class_name: ObjClass = None,
    connectivity: Annotated[int, typer.Option(help="6, 18 or 26.")] = 26,
    min_volume: Annotated[int, typer.Option(help="Remove objects below this many voxels.")] = 0,
    truth: Truth = None,
    chunk_slices: ChunkSlices = None,
    meshes: Annotated[int, typer.Option(help="Meshes for the N largest objects.")] = 20,
    split: Split = False,
    split_h: SplitH = None,
    split_min_distance: SplitMinDistance = None,
    voxel_size: ObjVoxelSize = None,
    unit: Unit = None,
    overwrite: Overwrite = False,
) -> None:
    """3D objects of a class: counts, volumes, shapes, meshes, preview (and detection scores)."""
    from tomoseg.evaluation.objects import analyze_objects

    if connectivity not in (6, 18, 26):
        raise TomosegError(f"--connectivity must be 6, 18 or 26, got {connectivity}")
    o = dict(locals())
    o.pop("analyze_objects")
    with render.progress_bar() as show, cancel_on_interrupt() as cancel:
        summary = analyze_objects(**o, progress=show, cancel=cancel)
    for line in render.objects_lines(summary, out):
        render.say(line)


def paths(
    volume: Annotated[
        Path, typer.Argument(help="Output folder of segment-stack (or a label volume).")
    ],
    out: Annotated[Path, typer.Option(help="Folder for branches.csv, SWC, GraphML, preview.")],
    class_name: Annotated[str, typer.Option("--class", help="The tubular class (name or id).")],
    soma_class: Annotated[
        str | None, typer.Option(help="Class of the somas the paths reach (name or id).")
    ] = None,
    chunk_slices: Annotated[
        int | None, typer.Option(help="Skeletonise slab by slab (bounded memory).")
    ] = None,
    voxel_size: Annotated[
        str | None, typer.Option(help="Voxel size Z,Y,X (default: from the volume's metadata).")
    ] = None,
    units: Annotated[
        str, typer.Option(help="physical, voxel, or auto (physical where the size is known).")
    ] = "auto",
    contact: Annotated[
        float | None, typer.Option(help="Largest gap from a path's end to a soma (physical).")
    ] = None,
    overwrite: Overwrite = False,
) -> None:
    """Paths of a tubular class: skeletons, branch lengths and radii, SWC, GraphML with somas."""
    from tomoseg.evaluation.paths import analyze_paths

    with render.progress_bar() as show, cancel_on_interrupt() as cancel:
        summary = analyze_paths(
            volume=volume, out=out, class_name=class_name, soma_class=soma_class,
            chunk_slices=chunk_slices, voxel_size=voxel_size, units=units, contact=contact,
            overwrite=overwrite, progress=show, cancel=cancel,
        )  # fmt: skip
    for line in render.paths_lines(summary, out):
        render.say(line)


def suggest(
    run: RunFolder,
    input: Input,
    n: Annotated[int, typer.Option("--n", help="How many slices to suggest.")] = 5,
    spacing: Annotated[
        int | None,
        typer.Option(help="Minimum distance in slices between suggestions (default: Z / 2n)."),
    ] = None,
    measure: Annotated[str, typer.Option(help="entropy or margin of the softmax.")] = "entropy",
    device: Device = "auto",
    tta: Tta = None,
    weights: Weights = None,
) -> None:
    """Rank the slices to label next: most uncertain first, spread over z."""
    from tomoseg.inference.suggest import suggest as run_suggest

    settings = inference_settings(device=device, tta=tta, weights=weights)
    with render.progress_bar() as show, cancel_on_interrupt() as cancel:
        result = run_suggest(
            run, input, n=n, spacing=spacing, measure=measure, settings=settings,
            progress=show, cancel=cancel,
        )  # fmt: skip
    for line in render.suggest_lines(result):
        render.say(line)
