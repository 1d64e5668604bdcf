"""``segment_stack(..., backend="ray")``: the stack's slices segmented by a pool of Ray actors.

A Ray Data dataset of the slice indices still to do (those without a progress marker) goes
through ``map_batches`` with a pool of actors (``concurrency=actors``, ``num_gpus=1`` each on
GPUs): each actor rebuilds the driver's Predictor once (from its picklable
:class:`~tomoseg.inference.predictor.PredictorSpec`, on the actor's device), reads its slices
from the job's source, segments them with the same
:meth:`~tomoseg.inference.predictor.Predictor.segment_batch` as the local executors and writes
them through the job's sink with their per-slice markers (each slice owns its chunks). The output is the
local run's, byte for byte: the same ``stack.json``, volume, markers and resume; ``part`` works
as for the local backend. The input (unless an array: it is sent with the job), the run and
``out`` must be on a file system every node of the cluster sees.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from tomoseg.errors import TomosegError
from tomoseg.inference.predictor import Predictor, PredictorSpec
from tomoseg.inference.stack_executors import segment_many
from tomoseg.inference.stack_io import open_slices, read_slice, write_slice
from tomoseg.inference.stack_job import StackJob
from tomoseg.utils.progress import JobProgress


class _SegmentActor:
    """One Ray actor: the network (rebuilt from the driver's picklable spec on the actor's
    device), the input's reader and the volume's writer, opened once."""

    def __init__(self, spec: PredictorSpec, device: str, threads: int, job: StackJob):
        import torch

        if device == "cpu":
            torch.set_num_threads(max(threads, 1))
        self.predictor = spec.build(device=device)
        self.src, self.nonfinite, self.intensity = job.src, job.nonfinite, job.intensity
        self._reading = open_slices(self.src, self.predictor.context)
        self.read = self._reading.__enter__()
        self.sink = job.sink.open(job.out, self.src.ids)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        idx = [int(i) for i in batch["i"]]
        read = [read_slice(self.read, self.src, i, self.nonfinite, self.intensity) for i in idx]
        labels = segment_many(self.predictor, [img for img, _, _ in read])
        for i, lab, (_, bad, found) in zip(idx, labels, read, strict=True):
            write_slice(self.sink, i, lab, bad, found)  # the driver warns from the markers
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


class RayExecutor:
    """Computes a job's slices on a pool of Ray actors (:func:`segment_stack` with
    ``backend="ray"``).

    Each actor rebuilds the driver's network from its picklable spec (the run and the settings
    ``stack.json`` records) on ``device``; the job (input source, sink, output folder) is sent
    to the actors as it is.

    Args:
        device: ``gpu`` (one GPU per actor), ``cpu``, or ``auto`` (GPUs if the cluster has any).
        address: Ray cluster (None: start Ray here with ``num_cpus`` CPUs, no dashboard).
        actors: size of the actor pool (default: one per GPU of the cluster, else 1).
        cpus_per_actor: CPUs (torch threads on CPU) per actor.
        num_cpus: CPUs of the local Ray started without ``address``.
        timeout: seconds to wait for the cluster.

    Raises:
        TomosegError: Ray not installed, ``actors`` or ``cpus_per_actor`` below 1, an unknown
            ``device``.
    """

    def __init__(
        self,
        device: str = "auto",
        address: str | None = None,
        actors: int | None = None,
        cpus_per_actor: int = 1,
        num_cpus: int | None = None,
        timeout: float = 30.0,
    ):
        from tomoseg.runtime.ray_session import require_ray

        require_ray()
        if actors is not None and actors < 1:
            raise TomosegError(f"actors={actors}: must be at least 1")
        if cpus_per_actor < 1:
            raise TomosegError(f"cpus_per_actor={cpus_per_actor}: must be at least 1")
        if device not in ("auto", "cpu", "gpu"):
            raise TomosegError(f"device={device!r}: must be auto, cpu or gpu")
        self.device, self.address, self.actors = device, address, actors
        self.cpus_per_actor, self.num_cpus, self.timeout = cpus_per_actor, num_cpus, timeout

    def run(self, job: StackJob, predictor: Predictor, progress: JobProgress) -> int:
        from tomoseg.runtime.ray_session import ray_session

        if not job.todo:
            return 0
        with ray_session(self.address, self.num_cpus, self.timeout) as ray:
            gpus = int(ray.cluster_resources().get("GPU", 0))
            on_gpu = self.device == "gpu" or (self.device == "auto" and gpus > 0)
            if on_gpu and gpus == 0:
                raise TomosegError("device='gpu' but the Ray cluster has no GPUs")
            pool = self.actors or (gpus if on_gpu else 1)
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = False
            ctx.print_on_execution_start = False
            for name in ("ray.data", "ray.util"):  # errors come back as one line
                logging.getLogger(name).setLevel(logging.CRITICAL)
            try:  # Ray >= 2.51: the actor pool as a compute strategy
                pool_args: dict[str, Any] = {"compute": ray.data.ActorPoolStrategy(size=pool)}
            except (AttributeError, TypeError):
                pool_args = {"concurrency": pool}
            todo = job.todo
            ds = ray.data.from_items([{"i": i} for i in todo], override_num_blocks=len(todo))
            args: dict[str, Any] = dict(
                fn_constructor_kwargs={
                    # the driver's Predictor: its run and settings, as stack.json records them
                    "spec": replace(predictor.spec, run=Path(predictor.spec.run).resolve()),
                    "device": "gpu" if on_gpu else "cpu",
                    "threads": self.cpus_per_actor,
                    "job": _portable(job),
                },
                batch_size=job.batch,
                batch_format="numpy",
                num_gpus=1 if on_gpu else 0,
                num_cpus=self.cpus_per_actor,
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
                    progress.advance(len(b["i"]))
            except TomosegError:
                raise
            except Exception as exc:
                raise _unwrap(exc) from None
        return computed


def _portable(job: StackJob) -> StackJob:
    """The job as actors on other nodes get it: absolute paths (the working directory differs)."""
    return replace(job, src=job.src.resolved(), out=Path(job.out).resolve(), todo=[])
