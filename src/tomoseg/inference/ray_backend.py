"""``tomoseg segment-stack --backend ray``: the stack's slices segmented by a pool of Ray actors.

A Ray Data dataset of the slice indices still to do (those without a progress marker) goes
through ``map_batches`` with a pool of actors (``concurrency=actors``, ``num_gpus=1`` each on
GPUs): each actor loads the model once, reads its slices from the input, segments them with the
same :func:`tomoseg.inference.predictor.segment_batch` as the local pipeline and writes them into
the shared volume with their per-slice markers (each slice owns its chunks). The output is the
local run's, byte for byte: the same ``stack.json``, volume, markers and resume; ``part`` works
as for the local backend. The input, the run and ``out`` must be on a file system every node of
the cluster sees.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from tomoseg.errors import TomosegError
from tomoseg.inference.predictor import InferenceSettings, PredictorSpec
from tomoseg.inference.stack import Runner, segment_stack
from tomoseg.inference.stack_io import _Sink, open_slices, read_slice, write_slice


class _SegmentActor:
    """One Ray actor: the Predictor (rebuilt from the driver's picklable spec on the actor's
    device), the input's reader and the volume, opened once."""

    def __init__(
        self,
        spec: PredictorSpec,
        device: str,
        input: str,
        allow_gaps: bool,
        out: str,
        fmt: str,
        threads: int,
        channel: int | None = None,
        time: int | None = None,
    ):
        import torch

        from tomoseg.io.volumes import open_source

        if device == "cpu":
            torch.set_num_threads(max(threads, 1))
        self.predictor = spec.build(device=device)
        self.src = open_source(input, allow_gaps, channel=channel, time=time)
        self.nonfinite = spec.settings.nonfinite
        self._reading = open_slices(self.src, self.predictor.context)
        self.read = self._reading.__enter__()
        self.out = Path(out)
        self.sink = _Sink(self.out, fmt, self.src.ids)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        idx = [int(i) for i in batch["i"]]
        read = [read_slice(self.read, self.src, i, self.nonfinite) for i in idx]
        labels = self.predictor.segment_batch([img for img, _ in read])[0]
        for i, lab, (_, bad) in zip(idx, labels, read, strict=True):
            write_slice(self.sink, i, lab, bad)
        return {"i": np.asarray(idx, dtype=np.int64)}


def _unwrap(exc: BaseException) -> BaseException:
    """The TomosegError inside Ray's wrappers, else a one-line TomosegError."""
    todo: list[BaseException] = [exc]
    seen: set[int] = set()
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, TomosegError):
            return TomosegError(str(e).strip().splitlines()[-1])
        todo += [
            x
            for x in (e.__cause__, e.__context__, getattr(e, "cause", None))
            if isinstance(x, BaseException)
        ]
    text = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    mine = [ln.split("TomosegError: ", 1)[1] for ln in text if "TomosegError: " in ln]
    if mine:
        return TomosegError(mine[-1][:300])
    return TomosegError(f"Ray backend: {(text or [type(exc).__name__])[-1][:300]}")


def ray_runner(
    input: str | os.PathLike[str],
    device: str = "auto",
    allow_gaps: bool = False,
    address: str | None = None,
    actors: int | None = None,
    cpus_per_actor: int = 1,
    num_cpus: int | None = None,
    timeout: float = 30.0,
    *,
    channel: int | None = None,
    time: int | None = None,
) -> Runner:
    """A ``runner`` for :func:`segment_stack` that computes the slices on Ray actors.

    The actors rebuild the driver's Predictor (:attr:`~tomoseg.inference.predictor.Predictor.spec`:
    the run and its settings, as :func:`segment_stack` recorded them) on their own device.

    Args:
        device: ``gpu`` (one GPU per actor), ``cpu``, or ``auto`` (GPUs if the cluster has any).
        address: Ray cluster (None: start Ray here with ``num_cpus`` CPUs, no dashboard).
        actors: size of the actor pool (default: one per GPU of the cluster, else 1).
        cpus_per_actor: CPUs (torch threads on CPU) per actor.
    """
    from tomoseg.runtime.ray_session import require_ray

    require_ray()
    if actors is not None and actors < 1:
        raise TomosegError(f"--actors must be at least 1, got {actors}")
    if cpus_per_actor < 1:
        raise TomosegError(f"--cpus-per-actor must be at least 1, got {cpus_per_actor}")
    if device not in ("auto", "cpu", "gpu"):
        raise TomosegError(f"device must be auto, cpu or gpu, got {device!r}")

    def runner(
        run: Any,
        src: Any,
        out: Path,
        fmt: str,
        todo: list[int],
        batch: int,
        progress: Callable[[int, int], None] | None,
        finished: int,
        nonfinite: str = "background",
    ) -> int:
        from tomoseg.runtime.ray_session import ray_session

        if not todo:
            return 0
        with ray_session(address, num_cpus, timeout) as ray:
            gpus = int(ray.cluster_resources().get("GPU", 0))
            on_gpu = device == "gpu" or (device == "auto" and gpus > 0)
            if on_gpu and gpus == 0:
                raise TomosegError("--device gpu but the Ray cluster has no GPUs")
            pool = actors or (gpus if on_gpu else 1)
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = False
            ctx.print_on_execution_start = False
            for name in ("ray.data", "ray.util"):  # errors come back as one line
                logging.getLogger(name).setLevel(logging.CRITICAL)
            try:  # Ray >= 2.51: the actor pool as a compute strategy
                pool_args: dict[str, Any] = {"compute": ray.data.ActorPoolStrategy(size=pool)}
            except (AttributeError, TypeError):
                pool_args = {"concurrency": pool}
            ds = ray.data.from_items([{"i": i} for i in todo], override_num_blocks=len(todo))
            args: dict[str, Any] = dict(
                fn_constructor_kwargs={
                    # the driver's Predictor (its settings, as stack.json records them)
                    "spec": replace(run.spec, run=Path(run.spec.run).resolve()),
                    "device": "gpu" if on_gpu else "cpu",
                    "input": str(Path(input).resolve()),
                    "allow_gaps": allow_gaps,
                    "out": str(out.resolve()),
                    "fmt": fmt,
                    "threads": cpus_per_actor,
                    "channel": channel,
                    "time": time,
                },
                batch_size=batch,
                batch_format="numpy",
                num_gpus=1 if on_gpu else 0,
                num_cpus=cpus_per_actor,
                **pool_args,
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:  # no actor restarts: a crashed actor fails the run, rerunning resumes
                    ds = ds.map_batches(_SegmentActor, max_restarts=0, **args)
                except TypeError:  # a Ray without that remote argument
                    ds = ds.map_batches(_SegmentActor, **args)
            computed = 0
            try:
                for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
                    computed += len(b["i"])
                    if progress is not None:
                        progress(finished + computed, src.n)
            except TomosegError:
                raise
            except Exception as exc:
                raise _unwrap(exc) from None
        return computed

    return runner


def segment_stack_ray(
    run_dir: str | os.PathLike[str],
    input: str | os.PathLike[str],
    out: str | os.PathLike[str],
    fmt: str = "zarr",
    voxel_size: Sequence[float] | str | None = None,
    overwrite: bool = False,
    batch_slices: int = 1,
    progress: Callable[[int, int], None] | None = None,
    unit: str | None = None,
    allow_gaps: bool = False,
    part: str | tuple[int, int] | None = None,
    address: str | None = None,
    actors: int | None = None,
    cpus_per_actor: int = 1,
    num_cpus: int | None = None,
    *,
    settings: InferenceSettings | None = None,
    channel: int | None = None,
    time: int | None = None,
) -> dict[str, Any]:
    """:func:`segment_stack` with the slices computed by Ray actors (same output, same resume).

    The driver loads the run on the CPU only to describe the job (``stack.json``); the actors
    load it on ``settings.device`` (``gpu``: one GPU per actor; ``auto``: GPUs if the cluster
    has any).
    """
    settings = settings or InferenceSettings()
    runner = ray_runner(
        input,
        settings.device,
        allow_gaps,
        address,
        actors,
        cpus_per_actor,
        num_cpus,
        channel=channel,
        time=time,
    )
    return segment_stack(
        run_dir,
        input,
        out,
        fmt,
        voxel_size,
        overwrite,
        batch_slices,
        progress,
        unit,
        allow_gaps,
        part=part,
        runner=runner,
        settings=replace(settings, device="cpu"),
        channel=channel,
        time=time,
    )
