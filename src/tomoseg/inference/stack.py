"""Segment a whole stack of slices into a 3D label volume, resumably, with bounded memory.

``segment_stack`` builds the job once (:class:`~tomoseg.inference.stack_job.StackJob`: the
input, the output and its sink, ``stack.json``, resume, parts, verify, summary) and hands its
slices to an executor (:mod:`tomoseg.inference.stack_executors`): reader and writer threads
around the model (the default on a CPU), I/O processes (``io_workers``, feeding a GPU without
the GIL) or Ray actors (``backend="ray"``, :mod:`tomoseg.inference.ray_backend`). The labels
are the same byte for byte whichever executor computes them.

Inputs (shape (Z, Y, X)): every registered slice source (:mod:`tomoseg.io.sources`): a folder
of 2D slices in natural sort order of their names (``z2`` before ``z10``), a multi-page TIFF
(ImageJ hyperstack, OME-TIFF) read page by page, a Zarr array or Zarr / OME-Zarr group, an HDF5
dataset, an MRC file, an N5 dataset, or an array in memory (numpy, dask).

Non-finite pixels (NaN, +-inf: outside the reconstructed field of view) are labelled background
(class 0) by the one rule of the Predictor; the summary counts them per slice (``nonfinite``).
``nonfinite="error"`` refuses the first such slice instead, naming it and its count (the slices
before it stay finished).

Slices out of the run's intensity range (another dtype family than the training images, or most
pixels outside its normalisation clip: :mod:`tomoseg.data.intensity`) are checked once each
where they are read; the first gives one warning, the summary counts them (``intensity``);
``intensity="error"`` refuses the first, ``"rescale"`` maps each slice's percentiles onto the
run's.

Outputs (in the folder ``out``):

* ``stack.json``: the run (path and weights hash), the input (path, slice ids, shape), the
  format and voxel size; a second call with the same run and input resumes, with another one it
  is refused unless ``overwrite``;
* ``labels.zarr`` (default): a Zarr v2 group in OME-NGFF 0.4 layout (``multiscales`` with axes
  z, y, x, their unit and the voxel size as a scale transform, plus ``image-label``) holding the
  uint8 class ids at path ``0``, chunked (1, <=1024, <=1024); napari (napari-ome-zarr) and Fiji
  (N5 / OME-Zarr readers) open it; or ``labels/<slice id>.tif`` (``format="tiff"``);
* ``progress/<index>``: a marker file per finished slice, created only after the slice's
  data is written (empty, or holding the slice's count of non-finite pixels when it has some).
  After ``kill -9`` (or a cancel) the same call computes the slices without a marker, and the
  result equals an uninterrupted run (each slice owns its own chunks, so a half-written slice
  is simply rewritten). Markers protect against a killed process, not against a power cut.
* ``quicklook.png``: three slices (a quarter, half and three quarters down the stack) with
  their labels drawn over them, once the whole stack is segmented (a failure to draw it only
  warns).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from tomoseg.data.intensity import IntensityTally
from tomoseg.errors import TomosegError
from tomoseg.inference.predictor import InferenceSettings, Predictor, as_predictor
from tomoseg.inference.stack_executors import Executor, local_executor
from tomoseg.inference.stack_job import (
    StackJob,
    missing_slices,
    parse_part,
    part_range,
)
from tomoseg.inference.stack_planes import PlanesRun, remove_planes
from tomoseg.inference.stack_sinks import Sink, VolumeMeta, get_sink
from tomoseg.io.jobs import file_sha256
from tomoseg.io.sources import SliceSource, open_source, parse_voxel_size, resolve_voxel_size
from tomoseg.reporting.quicklook import QUICKLOOK_NAME, quicklook_or_warn, spread
from tomoseg.utils.format import plural
from tomoseg.utils.planes import check_context, check_isotropic, parse_planes
from tomoseg.utils.progress import CancelToken, JobProgress, ProgressCallback, job_progress

__all__ = ["BACKENDS", "missing_slices", "parse_part", "part_range", "segment_stack"]

#: where the slices are computed: ``local`` (threads or I/O processes here) or ``ray``
BACKENDS = ("local", "ray")


def _check_backend(
    backend: str,
    io_workers: Any,
    address: str | None,
    actors: int | None,
    cpus_per_actor: int,
    num_cpus: int | None,
) -> None:
    if backend not in BACKENDS:
        raise TomosegError(f"backend={backend!r}: must be local or ray")
    if backend == "local" and (
        address is not None or actors is not None or cpus_per_actor != 1 or num_cpus is not None
    ):
        raise TomosegError("address, actors, cpus_per_actor and num_cpus need backend='ray'")
    if io_workers is not None and (
        isinstance(io_workers, bool)
        or not isinstance(io_workers, int | np.integer)
        or io_workers < 0
    ):
        raise TomosegError(
            f"io_workers={io_workers!r}: must be an integer >= 0 (0: threads; default: automatic)"
        )


def _ray(
    run_dir: Predictor | str | os.PathLike[str],
    settings: InferenceSettings | None,
    address: str | None,
    actors: int | None,
    cpus_per_actor: int,
    num_cpus: int | None,
) -> tuple[Executor, InferenceSettings | None]:
    """The Ray executor (the actors on the settings' device) and the driver's settings: the
    driver only describes the job, so a run folder is loaded there on the CPU."""
    from tomoseg.inference.ray_backend import RayExecutor

    given = run_dir.settings if isinstance(run_dir, Predictor) else settings
    device = given.device if given is not None else "auto"
    executor = RayExecutor(device, address, actors, cpus_per_actor, num_cpus)
    if not isinstance(run_dir, Predictor):
        settings = replace(settings or InferenceSettings(), device="cpu")
    return executor, settings


def _record(
    predictor: Predictor,
    input: dict[str, Any],
    sink: Sink,
    voxel: Sequence[float],
    unit: str,
) -> dict[str, Any]:
    """The job's ``stack.json`` (before it completes): the run, the input, the output format,
    the voxel size and the inference settings that change the labels."""
    run = predictor.run
    wfile = run.weights_file  # the weights load_run resolved
    assert wfile is not None
    return {
        "tomoseg": "segment-stack",
        "run": {
            "path": str(Path(run.path).resolve()),
            "weights": wfile.name,
            "sha256": file_sha256(wfile),
        },
        "classes": run.classes,
        "class_of_interest": run.class_of_interest,
        "input": input,
        "format": sink.fmt,
        "volume": sink.volume,
        "voxel_size": list(voxel),
        "unit": unit,
        "inference": _inference(predictor),
        "complete": False,
    }


def _quicklook(src: Any, volume: Path, out: Path, classes: list[str]) -> Path | None:
    """``<out>/quicklook.png`` (:mod:`tomoseg.reporting.quicklook`) of a finished stack: the
    input's slices a quarter, half and three quarters down with the labels read back from the
    output; None (and one warning) when it cannot be drawn."""

    def views() -> list[tuple[str, np.ndarray, np.ndarray]]:
        # the label volume leaves out chunks that hold only background (zarr's fill value):
        # not a hole in our own output, so no missing-chunk warning
        labels = open_source(volume, missing="ignore")
        got = []
        with src.reader() as image, labels.reader() as label:
            for z in spread(src.n, 3):
                got.append((f"slice {src.ids[z]}", image(z), label(z)))
        return got

    return quicklook_or_warn(
        out / QUICKLOOK_NAME, views, classes, f"{src.name}: {plural(src.n, 'slice')}"
    )


def _inference(predictor: Predictor) -> dict[str, Any]:
    """What ``stack.json`` records of the settings that change the labels: TTA, the decision,
    and ``intensity`` only when it is ``rescale`` (``warn`` and ``error`` change no label, so an
    output written before the setting existed resumes)."""
    rec: dict[str, Any] = {k: predictor.record()[k] for k in ("tta", "decision")}
    if predictor.settings.intensity == "rescale":
        rec["intensity"] = "rescale"
    return rec


def _check_planes(planes: Any, backend: str, part: Any, uncertainty: bool) -> tuple[str, ...]:
    """The job's planes (:func:`~tomoseg.utils.planes.parse_planes`), refused with what the
    plane passes do not support."""
    chosen = parse_planes(planes)
    if chosen != ("xy",) and (backend != "local" or part is not None or uncertainty):
        raise TomosegError(
            f"planes={','.join(chosen)} runs its passes in this process: use it with "
            "backend='local', without part or uncertainty"
        )
    return chosen


def _planes_fit(
    chosen: tuple[str, ...],
    predictor: Predictor,
    src: SliceSource,
    voxel: Sequence[float] | None,
    unit: str | None,
) -> None:
    """Refuse planes other than xy for a 2.5D run or anisotropic voxels."""
    check_context(chosen, predictor.context)
    check_isotropic(chosen, voxel, unit, src.where)


def segment_stack(
    run: Predictor | str | os.PathLike[str],
    input: str | os.PathLike[str] | Any,
    out: str | os.PathLike[str],
    *,
    format: str = "zarr",
    voxel_size: Sequence[float] | str | None = None,
    unit: str | None = None,
    overwrite: bool = False,
    batch_slices: int = 1,
    allow_gaps: bool = False,
    settings: InferenceSettings | None = None,
    channel: int | None = None,
    time: int | None = None,
    dataset: str | None = None,
    transpose: bool = False,
    missing: str = "warn",
    part: str | tuple[int, int] | None = None,
    verify: bool = False,
    backend: str = "local",
    io_workers: int | None = None,
    address: str | None = None,
    actors: int | None = None,
    cpus_per_actor: int = 1,
    num_cpus: int | None = None,
    executor: Executor | None = None,
    uncertainty: bool = False,
    planes: str | Sequence[str] = "xy",
    progress: ProgressCallback | JobProgress | None = None,
    cancel: CancelToken | None = None,
) -> dict[str, Any]:
    """Segment every slice of a stack into a 3D class-id volume (resumable, cancellable).

    Args:
        run: a :class:`~tomoseg.inference.predictor.Predictor`, or a trained run folder
            (or ``.safetensors`` file) segmented with ``settings``.
        input: folder of 2D slices, multi-page TIFF, Zarr array / (OME-)Zarr group, HDF5 file
            (``scan.h5:/exchange/data``), MRC file, N5 dataset or container, or a (Z, Y, X)
            array in memory (numpy, dask: read slice by slice); see
            :mod:`tomoseg.io.sources`.
        out: output folder (``stack.json``, ``labels.zarr`` or ``labels/``, ``progress/``).
        format: ``zarr`` (also ``ome-zarr``: an OME-NGFF 0.4 label volume) or ``tiff`` (one
            TIFF per slice).
        voxel_size: (z, y, x) voxel size; default: the input's metadata, else none (recorded
            as 1, 1, 1 without a unit: lengths and volumes are then in voxels).
        unit: unit of the voxel size (default: the input's; ``micrometer`` for a given
            ``voxel_size``; none when no voxel size is known).
        overwrite: discard an earlier output in ``out`` (otherwise the same job resumes and
            another one is refused).
        batch_slices: slices per forward pass.
        allow_gaps: accept numbered slice files with holes in the numbering.
        settings: how the run segments (:class:`~tomoseg.inference.predictor.InferenceSettings`:
            device, weights, runtime, TTA, post-processing, tiles; with ``backend="ray"`` the
            device is the actors'); its ``nonfinite`` rule: NaN / infinite pixels are labelled
            ``background`` (class 0; the network sees the normalisation's lower bound there)
            and counted, or refused (``error``). The TTA and the decision applied are recorded
            in ``stack.json`` (a resume with other settings is refused). None with a
            Predictor (its own settings).
        channel: channel index of an input with a C axis (ImageJ hyperstack, OME-TIFF,
            OME-Zarr); required when it has more than one channel.
        time: time-point index of an input with a T axis; required when it has more than one.
        dataset: the array of a container input (HDF5 dataset path, Zarr group member, N5
            dataset; also ``scan.h5:/exchange/data`` as ``input``); default: its one obvious
            volume.
        transpose: read an input whose declared axes are not in Z, Y, X order (x, y, z) by
            their names (refused without it).
        missing: slices of a Zarr, N5 or HDF5 input with chunks absent from the store (read as
            the fill value): ``warn`` (a warning naming them; counted in ``stack.json``'s
            ``input.missing_chunks`` and the summary), ``error`` (refused before any slice is
            computed) or ``ignore``.
        part: ``"I/N"`` or ``(I, N)``: compute only part I of N (1-based), a contiguous z range
            aligned to the volume's z-chunks, into an output shared with the other parts
            (created race-free by whichever part comes first; see :func:`part_range`).
        verify: compute nothing; check that every slice is finished (marks the output
            complete) or raise naming the missing slices.
        backend: ``local`` (threads or I/O processes here) or ``ray`` (a pool of Ray actors;
            the input, the run and ``out`` must be on a file system every node sees, or the
            input an array).
        io_workers: ``local``: processes that read + normalise and write slices (shared memory
            between them and the model), so that a GPU is fed without the GIL; 0 = the reader
            and writer threads; None = automatic
            (:func:`~tomoseg.inference.stack_io.auto_io_workers`: 0 when the network runs on
            the CPU or on <= 2 cores, else ``min(4, cores - 2)``). The labels are the same
            byte for byte.
        address: ``ray``: the cluster (None: start Ray here with ``num_cpus`` CPUs).
        actors: ``ray``: size of the actor pool (default: one per GPU of the cluster, else 1).
        cpus_per_actor: ``ray``: CPUs (torch threads on CPU) per actor.
        num_cpus: ``ray``: CPUs of the local Ray started without ``address``.
        executor: computes the slices instead of the one ``backend`` chooses
            (:class:`~tomoseg.inference.stack_executors.Executor`).
        uncertainty: also write the per-pixel uncertainty of the class decision (normalised
            entropy of the softmax, from the same forward pass) as ``uncertainty.zarr`` (float32
            OME-Zarr, 0-1) and each slice's mean as ``stack.json``'s ``uncertainty.scores``
            (what ``tomoseg suggest`` ranks); with the reader and writer threads only
            (``backend="local"``, ``io_workers=0``), not with ``part``.
        planes: ``xy`` (default: the z-slices), or ``xy,xz,yz`` (also ``xy,xz`` / ``xy,yz``):
            segment the volume along these orthogonal planes as well and label each voxel by
            the mean of the passes' class probabilities
            (:mod:`tomoseg.inference.stack_planes`: chunked, bounded memory, resumable);
            needs (nearly) cubic voxels (:data:`~tomoseg.utils.planes.MAX_ANISOTROPY`, from
            ``voxel_size`` or the input's metadata; unknown: a warning, treated as cubes), a
            run without 2.5D context, ``backend="local"``, no ``part`` nor ``uncertainty``;
            the passes run in this process (``io_workers`` and ``executor`` are not used).
            Recorded in ``stack.json`` (a resume with other planes is another job).
        progress: receives a :class:`~tomoseg.utils.progress.ProgressEvent` per finished slice
            (``done`` counts the slices finished before a resume too), in the calling thread.
        cancel: a :class:`threading.Event` (anything with ``is_set()``): when set, the job
            stops at the next slice, keeps what it finished and raises
            :class:`~tomoseg.utils.progress.Cancelled`; the same call resumes it.

    Returns:
        ``out``, ``volume``, ``format``, ``slices``, ``computed`` (this call), ``skipped`` (finished
        earlier), ``seconds``, ``slices_per_second``, ``voxel_size``, ``unit``, ``planes``,
        ``nonfinite``
        (``pixels`` and ``slices`` in all, ``per_slice``: slice id -> count of non-finite pixels,
        slices without any left out), ``intensity`` (``rule``, ``checked``, ``trained_dtypes``,
        ``range``, ``slices``: how many are out of the run's intensity range, ``per_slice``:
        slice id -> ``dtype``, ``outside``), ``missing_chunks`` (``slices``, ``chunks``,
        ``per_slice``: the input's slices with chunks absent from its store); with ``part`` or
        ``verify``: ``first``, ``last``,
        ``part``, ``stack_slices``, ``missing``, ``complete`` instead of ``nonfinite``;
        ``quicklook``: the path of ``quicklook.png`` once the stack is complete (absent when it
        could not be drawn).

    Raises:
        TomosegError: bad input (a TIFF cut short, axes out of Z, Y, X order without
            ``transpose``, missing chunks with ``missing="error"``), ``io_workers`` not an
            integer >= 0, Ray options without ``backend="ray"``, a slice of another shape or unreadable (named; the slices before
            it are finished), non-finite pixels with ``nonfinite="error"`` or a slice out of
            the run's intensity range with ``intensity="error"`` (named likewise), a
            hyperstack with C or T > 1 and no ``channel`` / ``time``, an output of another job,
            a full disk.
        Cancelled: ``cancel`` was set (a :class:`TomosegError`).
    """
    prog = job_progress("segment-stack", "slice", progress=progress, cancel=cancel)
    sink = get_sink("zarr" if format == "ome-zarr" else format)
    if int(batch_slices) < 1:
        raise TomosegError(f"batch_slices={batch_slices!r}: must be >= 1")
    _check_backend(backend, io_workers, address, actors, cpus_per_actor, num_cpus)
    i_n = parse_part(part) if part is not None else None
    if uncertainty and (backend != "local" or io_workers or i_n is not None or verify):
        raise TomosegError(
            "uncertainty=True is written by the reader and writer threads: use it with "
            "backend='local' and io_workers=0, without part or verify"
        )
    chosen = _check_planes(planes, backend, part, uncertainty)
    voxel = parse_voxel_size(voxel_size)
    src = open_source(
        input,
        allow_gaps,
        channel=channel,
        time=time,
        dataset=dataset,
        transpose=transpose,
        missing=missing,
    )
    if backend == "ray" and executor is None and not verify:
        executor, settings = _ray(run, settings, address, actors, cpus_per_actor, num_cpus)
    predictor = as_predictor(run, settings)
    _planes_fit(chosen, predictor, src, voxel or src.voxel_size, unit or src.unit)
    voxel, unit = resolve_voxel_size(voxel, unit, src.voxel_size, src.unit)
    info = _record(predictor, src.describe(), sink, voxel, unit)
    if uncertainty:  # a resume with and without it are different jobs
        info["inference"]["uncertainty"] = "entropy"
    if chosen != ("xy",):  # likewise (absent for xy: earlier outputs resume)
        info["inference"]["planes"] = list(chosen)
    meta = VolumeMeta(
        f"{src.name} segmented", voxel, unit, predictor.classes, predictor.class_of_interest
    )
    job = StackJob(
        src=src,
        out=Path(out),
        sink=sink,
        info=info,
        meta=meta,
        batch=int(batch_slices),
        nonfinite=predictor.settings.nonfinite,
        intensity=predictor.intensity,
        tally=IntensityTally(predictor.settings.intensity),
        part=i_n,
        verify=bool(verify),
        uncertainty=bool(uncertainty),
    ).prepare(bool(overwrite))
    prog.set_total(len(job.span), done=job.finished)
    prog.start()
    computed = 0
    if job.todo:
        if uncertainty and executor is None:
            io_workers = 0  # the threads write the second volume
        if chosen != ("xy",):
            executor = PlanesRun(chosen)
        executor = executor or local_executor(io_workers, predictor.device.type != "cpu")
        computed = executor.run(job, predictor, prog)
    summary = job.finish(computed)
    summary["planes"] = list(chosen)
    if chosen != ("xy",) and not job.shared:
        remove_planes(job.out)  # the job is complete: its passes' stores are not needed
    if not verify and (i_n is None or summary.get("complete")):
        picture = _quicklook(src, Path(summary["volume"]), Path(out), predictor.classes)
        if picture is not None:
            summary["quicklook"] = str(picture)
    prog.end(f"{plural(summary['slices'], 'slice')} ({computed} computed) -> {summary['volume']}")
    return summary
