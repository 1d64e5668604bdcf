"""A ``segment_stack`` job, built once: the input, the output and its sink, the job's identity
(``stack.json``), resume from the progress markers, parts, verify and the summary.

Executors (:mod:`tomoseg.inference.stack_executors`, :mod:`tomoseg.inference.ray_backend`)
compute the job's ``todo`` slices; everything they share about the job lives here, so a new
executor never restates the resume or identity rules.

Files of the output folder ``out`` (kept byte-compatible, so old outputs resume):

* ``stack.json``: the run (path and weights hash), the input (path, slice ids, shape), the
  format, voxel size and inference settings; a second call of the same job resumes, another job
  is refused unless ``overwrite``;
* the volume (:mod:`tomoseg.inference.stack_sinks`): ``labels.zarr`` or ``labels/``;
* ``planes/``: with planes other than ``xy``, the passes' temporary stores and markers
  (:mod:`tomoseg.inference.stack_planes`), removed when the job completes;
* ``progress/<index>``: a marker per finished slice, created only after the slice's data is
  written (empty, or holding the slice's count of non-finite pixels and, when it is out of the
  run's intensity range, its dtype and fraction of pixels outside:
  :func:`~tomoseg.inference.stack_io.marker_text`).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Any

from tomoseg.data.intensity import IntensityCheck, IntensityFinding, IntensityTally, warn_intensity
from tomoseg.errors import TomosegError
from tomoseg.inference.stack_io import PROGRESS_DIR, read_marker
from tomoseg.inference.stack_sinks import Sink, VolumeMeta
from tomoseg.inference.stack_uncertainty import (
    MEASURE,
    SCORES_DIR,
    UNCERTAINTY_NAME,
    create_volume,
    read_scores,
    volume_ok,
)
from tomoseg.io.jobs import job_difference
from tomoseg.io.sources import SliceSource
from tomoseg.io.volumes import PLANES_DIR, STACK_FILE, TIFF_DIR, ZARR_NAME, read_stack_info
from tomoseg.io.writers import (
    prepare_output_dir,
    remove_stale_temporaries,
    temporary_path,
    write_json,
)
from tomoseg.utils.format import plural

_NO_EXTRAS: dict[str, Any] = {"tta": ["identity"], "decision": None}


def identity(rec: dict) -> dict[str, Any]:
    """What makes a ``stack.json`` the same job: the weights, the input and how it is read, the
    input's version (shape, slice ids) and the output format."""
    run, inp = rec.get("run") or {}, rec.get("input") or {}
    return {
        "model": run.get("sha256"),
        "input": {
            k: inp.get(k) for k in ("path", "kind", "dataset", "channel", "time", "fingerprint")
        },
        "input version": {"shape": inp.get("shape"), "ids": inp.get("ids")},
        "format": rec.get("format"),
        # TTA and the tuned decision (absent from a stack.json written before they existed)
        "inference": rec.get("inference", _NO_EXTRAS),
    }


def mismatch(old: dict, new: dict) -> str | None:
    """Why an existing stack.json belongs to another job (None if it is the same job), by the one
    "same job" rule of :mod:`tomoseg.io.jobs`."""
    diff = job_difference(identity(old), identity(new))
    if diff is None:
        return None
    key, was, _ = diff
    shown = f"{len(was)} slices" if isinstance(was, list) and len(was) > 4 else repr(was)
    return f"another {key} ({shown} there)"


def parse_part(value: str | tuple[int, int]) -> tuple[int, int]:
    """``"I/N"`` (or ``(I, N)``) as ``(I, N)`` with ``1 <= I <= N``.

    Raises:
        TomosegError: anything else (``0/2``, ``3/2``, ``a/b``).
    """
    bits = value.strip().split("/") if isinstance(value, str) else list(value)
    try:
        i, n = (int(b) for b in bits) if len(bits) == 2 else (0, 0)
    except (TypeError, ValueError):
        i = n = 0
    if not 1 <= i <= n:
        raise TomosegError(
            f"part={value!r}: must be I/N with 1 <= I <= N (e.g. 1/4 for the first of four)"
        )
    return i, n


def part_range(slices: int, i: int, n: int, z_chunk: int = 1) -> range:
    """The slices of part ``i`` of ``n``: whole z-chunks, contiguous, as even as chunks allow.

    Parts never share a chunk, so they never write the same file; the ``n`` ranges cover
    ``range(slices)`` exactly (parts beyond the number of chunks are empty).
    """
    chunks = -(-slices // max(z_chunk, 1))
    a, b = (i - 1) * chunks // n, i * chunks // n
    return range(min(a * z_chunk, slices), min(b * z_chunk, slices))


def missing_slices(out: str | os.PathLike[str], slices: int) -> list[int]:
    """Indices in ``range(slices)`` without a progress marker in ``out``."""
    marks = Path(out) / PROGRESS_DIR
    done = {int(f.name) for f in marks.iterdir() if f.name.isdigit()} if marks.is_dir() else set()
    return [i for i in range(slices) if i not in done]


def _ranges(idx: list[int], ids: list[str]) -> str:
    """``z0003-z0005 (3-5), z0010 (10)``: runs of consecutive indices, at most 10 of them."""
    runs: list[tuple[int, int]] = []
    for i in idx:
        if runs and i == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    text = [f"{ids[a]} ({a})" if a == b else f"{ids[a]}-{ids[b]} ({a}-{b})" for a, b in runs[:10]]
    return ", ".join(text) + (f" and {len(runs) - 10} more runs" if len(runs) > 10 else "")


def _publish_once(path: Path, obj: Any) -> bool:
    """Write JSON to ``path`` only if it does not exist, atomically (a hard link of a finished
    temporary file: readers never see half a file). Returns whether this call wrote it."""
    tmp = write_json(temporary_path(path.parent, path.suffix), obj)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def _remove_outputs(out: Path) -> None:
    for name in (ZARR_NAME, TIFF_DIR, PROGRESS_DIR, UNCERTAINTY_NAME, SCORES_DIR, PLANES_DIR):
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
    (out / STACK_FILE).unlink(missing_ok=True)


def _marker_notes(marks: Path, ids: list[str]) -> tuple[dict[str, int], dict[str, dict[str, Any]]]:
    """From the progress markers: non-finite pixels per slice (slices with some), and the
    slices out of the run's intensity range (slice id -> ``dtype``, ``outside``)."""
    bad: dict[str, int] = {}
    off: dict[str, dict[str, Any]] = {}
    for f in sorted(marks.iterdir()) if marks.is_dir() else []:
        if f.name.isdigit() and int(f.name) < len(ids) and f.stat().st_size:
            n, found = read_marker(f)
            if n:
                bad[ids[int(f.name)]] = n
            if found is not None:
                off[ids[int(f.name)]] = {"dtype": found[0], "outside": found[1]}
    return bad, off


def _nonfinite_summary(per: dict[str, int]) -> dict[str, Any]:
    """``stack.json``'s ``nonfinite``: non-finite pixels in all and per slice."""
    return {
        "rule": "background (class 0): outside the field of view",
        "pixels": sum(per.values()),
        "slices": len(per),
        "per_slice": per,
    }


def _intensity_summary(check: IntensityCheck | None, per: dict[str, Any]) -> dict[str, Any]:
    """``stack.json``'s ``intensity``: the rule, what the run was trained on and the slices out
    of its range (``checked`` false: the run records no training intensities)."""
    trained = check.trained if check is not None else None
    return {
        "rule": check.rule if check is not None else "warn",
        "checked": trained is not None,
        "trained_dtypes": trained.dtypes if trained is not None else None,
        "range": [trained.lower, trained.upper] if trained is not None else None,
        "slices": len(per),
        "per_slice": per,
    }


@dataclass
class StackJob:
    """One ``segment_stack`` call: what to compute and where, built once.

    Attributes:
        src: the input (any registered :class:`~tomoseg.io.sources.SliceSource`).
        out: the output folder.
        sink: the output format (:mod:`tomoseg.inference.stack_sinks`).
        info: the ``stack.json`` record of the job (run, input, format, voxel size, inference).
        meta: the volume's metadata (title, voxel size, unit, classes).
        batch: slices per forward pass.
        nonfinite: ``background`` or ``error`` (the rule for NaN / infinite pixels).
        intensity: the ``intensity`` rule with what the run was trained on (applied by the
            slice readers).
        tally: this call's slices out of the run's intensity range (the first is warned
            about at once by a local executor; :meth:`finish` warns when none was, e.g. Ray).
        part: ``(I, N)``: only part I of N, into an output shared with the other parts.
        verify: compute nothing; check that every slice is finished.
        uncertainty: also write the uncertainty volume and per-slice scores
            (:mod:`tomoseg.inference.stack_uncertainty`).
        span: the slices of this call (the stack, or the part); set by :meth:`prepare`.
        todo: the slices of ``span`` without a marker (to compute); set by :meth:`prepare`.
    """

    src: SliceSource
    out: Path
    sink: Sink
    info: dict[str, Any]
    meta: VolumeMeta
    batch: int = 1
    nonfinite: str = "background"
    intensity: IntensityCheck | None = None
    tally: IntensityTally = field(default_factory=IntensityTally)
    part: tuple[int, int] | None = None
    verify: bool = False
    uncertainty: bool = False
    span: range = field(default_factory=lambda: range(0))
    todo: list[int] = field(default_factory=list)
    t0: float = field(default_factory=perf_counter)

    @property
    def shared(self) -> bool:
        """Whether the output is shared by parts (``part`` or ``verify``): created race-free,
        never cleared."""
        return self.part is not None or self.verify

    @property
    def finished(self) -> int:
        """Slices of :attr:`span` finished before this call (a resume)."""
        return len(self.span) - len(self.todo)

    @property
    def marks(self) -> Path:
        return self.out / PROGRESS_DIR

    # ------------------------------------------------------------------ before computing

    def prepare(self, overwrite: bool) -> StackJob:
        """Check the output against the job, create (or resume) it and find the slices to do.

        Raises:
            TomosegError: an output of another job (without ``overwrite``), ``overwrite`` with
                parts, ``verify`` of an output that holds no segmentation.
        """
        if self.shared:
            self._prepare_shared(overwrite)
        else:
            self._prepare_whole(overwrite)
        remove_stale_temporaries(self.out)  # of writes a kill interrupted
        return self

    def _prepare_whole(self, overwrite: bool) -> None:
        out, info = self.out, self.info
        old = read_stack_info(out) if out.is_dir() else None
        resume = False
        if old is not None:
            why = mismatch(old, info)
            if why is not None and not overwrite:
                raise TomosegError(
                    f"output {out} holds a segmentation by {why}; use overwrite to replace it"
                )
            if overwrite:
                _remove_outputs(out)
            else:
                resume = self.sink.ok(out, self.src)
        else:
            prepare_output_dir(out, overwrite, [ZARR_NAME, TIFF_DIR, PROGRESS_DIR])
            _remove_outputs(out)
        if resume and self.uncertainty and not volume_ok(out, self.src):
            resume = False  # the uncertainty volume is gone: start over
            _remove_outputs(out)
        if not resume:
            for stale in (self.marks, out / PLANES_DIR):  # a new job keeps no earlier step
                if stale.is_dir():
                    shutil.rmtree(stale)
            write_json(out / STACK_FILE, info)
            self.sink.create(out, self.src, self.meta)
            if self.uncertainty:
                chunks = (1, *(min(n, 1024) for n in self.src.shape))
                create_volume(out, self.src, chunks, self.meta.voxel, self.meta.unit)
        else:
            write_json(out / STACK_FILE, info)
            self.sink.update(out, self.meta)  # a new voxel size or unit only changes metadata
        self.marks.mkdir(parents=True, exist_ok=True)
        self.span = range(self.src.n)
        missing = set(missing_slices(out, self.src.n))
        self.todo = [i for i in self.span if i in missing]

    def _prepare_shared(self, overwrite: bool) -> None:
        out, info = self.out, self.info
        if overwrite:
            raise TomosegError(
                "overwrite=True would erase the other parts' slices (with part or verify); "
                "clear the output once without part (or use another out)"
            )
        old = read_stack_info(out) if out.is_dir() else None
        if self.verify and old is None:
            raise TomosegError(f"verify=True: {out} holds no segmentation (no {STACK_FILE})")
        if old is None:
            out.mkdir(parents=True, exist_ok=True)
            if not _publish_once(out / STACK_FILE, info):
                old = read_stack_info(out)
        if old is not None:
            why = mismatch(old, info)
            if why is not None:
                raise TomosegError(
                    f"output {out} holds a segmentation by {why}; parts write only into an "
                    "output of the same model and input (use another out)"
                )
        if self.verify:
            if not self.sink.ok(out, self.src):
                raise TomosegError(f"verify=True: {out} holds no label volume of this stack")
        else:
            self.sink.create_once(out, self.src, self.meta)
        self.marks.mkdir(exist_ok=True)
        self.span = range(self.src.n)
        if self.part is not None:
            self.span = part_range(self.src.n, *self.part, self.sink.z_chunk(out))
        self.todo = []
        if not self.verify:
            missing = set(missing_slices(out, self.src.n))
            self.todo = [i for i in self.span if i in missing]

    # ------------------------------------------------------------------ after computing

    def finish(self, computed: int) -> dict[str, Any]:
        """The summary of this call; marks ``stack.json`` complete when every slice is done.

        Raises:
            TomosegError: ``verify`` and slices are missing (naming them).
        """
        seconds = perf_counter() - self.t0
        out, info, rng, i_n = self.out, self.info, self.span, self.part
        summary: dict[str, Any] = {
            "out": str(out),
            "volume": str(out / info["volume"]),
            "format": self.sink.fmt,
            "slices": len(rng),
        }
        if self.shared:
            summary["first"] = rng.start if len(rng) else None
            summary["last"] = rng.stop - 1 if len(rng) else None
            summary["part"] = f"{i_n[0]}/{i_n[1]}" if i_n else None
        summary.update(
            computed=computed,
            skipped=self.finished,
            seconds=round(seconds, 3),
            slices_per_second=round(computed / seconds, 4) if seconds > 0 else None,
            voxel_size=list(info["voxel_size"]),
            unit=info["unit"],
        )
        bad, off = _marker_notes(self.marks, self.src.ids)
        summary["intensity"] = _intensity_summary(self.intensity, off)
        self._warn_intensity(off)
        if not self.shared:
            summary["nonfinite"] = _nonfinite_summary(bad)
            summary["missing_chunks"] = info["input"].get("missing_chunks")
            final = {**info, "complete": True, "summary": summary}
            if self.uncertainty:
                summary["uncertainty"] = str(out / UNCERTAINTY_NAME)
                final["uncertainty"] = {
                    "measure": MEASURE,
                    "volume": UNCERTAINTY_NAME,
                    "scores": read_scores(out, self.src.n),  # mean per slice, in stack order
                }
            write_json(out / STACK_FILE, final)
            return summary
        missing = missing_slices(out, self.src.n)
        summary.update(stack_slices=self.src.n, missing=len(missing), complete=not missing)
        if not missing:  # the last part to finish (or a verify) marks the whole output complete
            final = read_stack_info(out) or info
            if not final.get("complete"):
                write_json(out / STACK_FILE, {**final, "complete": True, "summary": summary})
        elif self.verify:
            raise TomosegError(
                f"{len(missing)} of {plural(self.src.n, 'slice')} "
                f"{'is' if len(missing) == 1 else 'are'} "
                f"missing in {out}: "
                f"{_ranges(missing, self.src.ids)}; rerun the parts that hold them (or once "
                "without part)"
            )
        return summary

    def _warn_intensity(self, off: dict[str, dict[str, Any]]) -> None:
        """The stack's one warning when no executor gave it (Ray actors; or every such slice
        was finished before this call): naming the first slice out of range and the count."""
        check = self.intensity
        if not off or self.tally.warned or check is None or check.rule != "warn":
            return
        if check.trained is None:
            return
        first, note = next(iter(off.items()))
        found = IntensityFinding(
            f"slice {first} of {self.src.where}",
            note["dtype"],
            tuple(check.trained.dtypes),
            note["outside"],
            check.trained.lower,
            check.trained.upper,
        )
        self.tally.warned = True
        warn_intensity(
            found,
            f" ({len(off)} of {plural(self.src.n, 'slice')} {'is' if len(off) == 1 else 'are'}, "
            "see stack.json)",
        )
