"""Everything the command line draws with rich: consoles, tables, progress, result lines.

The library returns plain data (rows as dicts, summaries as dicts) and reports progress as
:class:`~tomoseg.utils.progress.ProgressEvent` s; this module turns them into text for a
terminal, or into plain lines that never wrap mid-number when the output is a file (Slurm,
``nohup``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from tomoseg.utils.format import plural
from tomoseg.utils.progress import ProgressEvent

#: Width of the lines written to a file or pipe: wide enough that no summary line wraps.
LOG_WIDTH = 240

#: An environment variable: where it names a file, every progress event a command reports is
#: appended to it as one JSON line (``job``, ``kind``, ``unit``, ``done``, ``total``), before
#: it is drawn. For tests that act at a job's own progress (``tests/test_crash.py`` kills each long
#: command at chosen events) and for tools that follow a job without its terminal.
PROGRESS_LOG_ENV = "TOMOSEG_PROGRESS_LOG"


def make_console(stderr: bool = False) -> Console:
    """A console for stdout (or stderr): rich's defaults on a terminal; without one (a log
    file, a pipe) soft-wrapped, wide lines, so that a line is never broken mid-number."""
    console = Console(stderr=stderr)
    if console.is_terminal:
        return console
    return Console(stderr=stderr, soft_wrap=True, width=max(console.width, LOG_WIDTH))


console = make_console()
err_console = make_console(stderr=True)


def say(text: str) -> None:
    """Print a line of plain text (no markup, no highlighting) on stdout."""
    console.print(text, markup=False, highlight=False)


def error_line(text: str) -> None:
    """Print one ``error: ...`` line on stderr."""
    err_console.print(f"error: {text}", markup=False, highlight=False, soft_wrap=True)


def warning_line(text: str) -> None:
    """Print one ``warning: ...`` line on stderr."""
    err_console.print(f"warning: {text}", markup=False, highlight=False, soft_wrap=True)


def table(title: str, groups: Sequence[Sequence[Mapping[str, Any]]], numbers: bool = True) -> Table:
    """A rich table of row groups: each row maps column names to cell text (the first row's
    keys are the columns; with ``numbers`` all columns but the first are right-aligned); a
    line separates the groups."""
    t = Table(title=title)
    columns = list(next(r for g in groups for r in g).keys())
    for i, col in enumerate(columns):
        t.add_column(col, justify="right" if numbers and i else "left")
    for i, group in enumerate(groups):
        if i:
            t.add_section()
        for row in group:
            t.add_row(*(str(row.get(c, "")) for c in columns))
    return t


def show_table(
    title: str, groups: Sequence[Sequence[Mapping[str, Any]]], numbers: bool = True
) -> None:
    """Print :func:`table` on stdout."""
    console.print(table(title, groups, numbers))


def show_scores(summary: Any, title: str = "scores (%)") -> None:
    """Print the score table of a :class:`~tomoseg.metrics.segmentation.ScoreSummary`."""
    from tomoseg.reporting.scores import score_rows

    show_table(title, score_rows(summary))


def show_check(report: Mapping[str, Any]) -> None:
    """Print what :func:`tomoseg.data.check.check_data` found: its table, the annotated
    fraction per image, the notes and the verdict."""
    show_table(report["title"], [report["rows"]], numbers=False)
    how = "inferred from the masks' ids" if report.get("inferred") else "from dataset.json"
    say(f"classes: {', '.join(report['classes'])} ({how})")
    for line in report["per_image"]:
        say(line)
    for note in report["notes"]:
        say(f"note: {note}")
    say("all pairs read and checked: ok")


def duration(seconds: float | None) -> str:
    """``h:mm:ss`` (``-:--:--`` while unknown)."""
    if seconds is None:
        return "-:--:--"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _counts(event: ProgressEvent) -> str:
    total = "?" if event.total is None else str(event.total)
    return f"{event.done}/{total} {event.unit}s"


def rate(units: int, seconds: float, unit: str) -> str:
    """A speed as people read it: ``2.31 slices/s``, or ``12.3 s/epoch`` below one per
    second (empty while nothing is measured)."""
    if units <= 0 or seconds <= 0:
        return ""
    per_second = units / seconds
    return f"{per_second:.2f} {unit}s/s" if per_second >= 1 else f"{1 / per_second:.1f} s/{unit}"


class _EtaColumn(ProgressColumn):
    """The job's ETA, counting down between events (``task.fields['done_at']``: the
    ``time.monotonic()`` at which the last event's ETA ends; None while unknown)."""

    def render(self, task: Task) -> Text:
        done_at = task.fields.get("done_at")
        left = None if done_at is None else max(0.0, done_at - time.monotonic())
        return Text(f"ETA {duration(left)}")


class ProgressRenderer:
    """A ``progress=`` callback for library jobs that draws on a console.

    On a terminal: one bar for the whole job (units done / total, elapsed, ETA from
    :attr:`ProgressEvent.eta`); each unit's summary and each message printed on its own line
    above the bar. Without a terminal: one plain line per unit (``train: 3/24 epochs, ETA
    0:05:12: <summary>``) and per message. Call :meth:`close` (or use :func:`progress_bar`).
    """

    #: Seconds between the lines of units without a summary in a log.
    LOG_EVERY = 10.0

    def __init__(self, out: Console, *, bar: bool | None = None):
        self.out = out
        self.live = out.is_terminal if bar is None else bar
        self._progress: Progress | None = None
        self._tasks: dict[str, TaskID] = {}
        self._first: dict[str, int] = {}  # units done before this call, per job
        self._outer = ""
        self._logged = -float("inf")
        self._events = os.environ.get(PROGRESS_LOG_ENV) or None

    def __call__(self, event: ProgressEvent) -> None:
        if self._events:
            self._append(event)
        if event.kind == "message":
            self.out.print(event.message, markup=False, highlight=False)
        elif self.live:
            self._draw(event)
        elif event.kind == "advance" and self._log_due(event):
            eta = f", ETA {duration(event.eta)}" if event.eta is not None else ""
            summary = f": {event.message}" if event.message else ""
            line = f"{event.job}: {_counts(event)}{eta}{summary}"
            self.out.print(line, markup=False, highlight=False)

    def _append(self, event: ProgressEvent) -> None:
        """One JSON line for the event in the file named by :data:`PROGRESS_LOG_ENV`."""
        keys = ("job", "kind", "unit", "done", "total")
        with open(self._events, "a") as f:  # type: ignore[arg-type]
            f.write(json.dumps({k: getattr(event, k) for k in keys}) + "\n")

    def _log_due(self, event: ProgressEvent) -> bool:
        """Whether a unit gets its line in a log: one with a summary always, the last one, and
        otherwise one every :attr:`LOG_EVERY` seconds (a stack of 10,000 slices is not 10,000
        lines)."""
        now = time.monotonic()
        if event.message or event.done == event.total or now - self._logged >= self.LOG_EVERY:
            self._logged = now
            return True
        return False

    def _draw(self, event: ProgressEvent) -> None:
        """Update the job's bar (one per job: a job run inside another gets its own)."""
        if self._progress is None:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[counts]}"),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                _EtaColumn(),
                console=self.out,
            )
            self._progress.start()
            self._outer = event.job
        if event.job not in self._tasks:
            self._tasks[event.job] = self._progress.add_task(event.job, counts="", rate="")
            self._first[event.job] = event.done if event.kind == "start" else event.done - 1
        if event.message and event.kind == "advance":
            self._progress.console.print(event.message, markup=False, highlight=False)
        eta = 0.0 if event.kind == "end" else event.eta
        done_at = None if eta is None else time.monotonic() + eta
        self._progress.update(
            self._tasks[event.job], completed=event.done, total=event.total,
            counts=_counts(event), done_at=done_at,
            rate=rate(event.done - self._first[event.job], event.elapsed, event.unit),
        )  # fmt: skip
        if event.kind == "end" and event.job == self._outer:
            self.close()

    def close(self) -> None:
        """Stop the bar (it stays on screen as last drawn)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress, self._tasks = None, {}


@contextmanager
def progress_bar(enabled: bool = True, bar: bool = True) -> Iterator[ProgressRenderer | None]:
    """A :class:`ProgressRenderer` on stdout for the duration of a job (None when not
    ``enabled``; lines only, no bar, without ``bar``); the bar is stopped however the job
    ends."""
    if not enabled:
        yield None
        return
    renderer = ProgressRenderer(console, bar=None if bar else False)
    try:
        yield renderer
    finally:
        renderer.close()


def tune_line(run: Any, decision: Any, report: Mapping[str, Any]) -> str:
    """The one-line result of ``tune``: the decision and validation IoU/BF1 before -> after."""
    b, a = report["before"], report["after"]
    return (
        f"decision: offset {decision.offset:+g}, min object {decision.min_size} px, "
        f"max hole {decision.max_hole} px; validation IoU {b['iou']:.3f} -> {a['iou']:.3f}, "
        f"BF1 {b['bf1']:.3f} -> {a['bf1']:.3f} on {plural(report['images'], 'image')} "
        f"({report['source']}); written to {run}/decision.json"
    )


def stack_lines(info: Mapping[str, Any], verify: bool = False) -> list[str]:
    """The result of ``segment-stack``: slices, rate and volume; a part's place in the whole
    stack; the non-finite pixels labelled background; the slices out of the run's intensity
    range."""
    if verify:
        return [
            f"complete: all {plural(info['stack_slices'], 'slice')} finished in {info['volume']}"
        ]
    where = ""
    if info.get("part"):
        span = f"{info['first']}-{info['last']}" if info["slices"] else "none"
        where = f"part {info['part']} (slices {span} of {info['stack_slices']}): "
    lines = [
        f"{where}{plural(info['slices'], 'slice')} ({info['computed']} computed, "
        f"{info['skipped']} already done) in {info['seconds']:.1f} s, "
        f"{(info['slices_per_second'] or 0.0):.2f} slices/s -> {info['volume']}"
    ]
    if info.get("part"):
        lines.append(
            "the whole stack is complete"
            if info["complete"]
            else f"{plural(info['missing'], 'slice')} of the stack still missing (other parts)"
        )
    bad = info.get("nonfinite") or {}
    if bad.get("pixels"):
        lines.append(
            f"{bad['pixels']} non-finite (NaN or infinite) pixels in {bad['slices']} of "
            f"{plural(info['slices'], 'slice')} labelled background (outside the field of view); "
            "per slice in stack.json"
        )
    off = info.get("intensity") or {}
    if off.get("slices"):
        what = "rescaled" if off["rule"] == "rescale" else "segmented as they are"
        lines.append(
            f"{off['slices']} of {plural(info['slices'], 'slice')} are of another type or "
            f"mostly outside the run's intensity range ({what}); per slice in stack.json"
        )
    if info.get("quicklook"):
        lines.append(f"quick look: {info['quicklook']} (a few slices with their labels)")
    return lines + uncertainty_lines(info)


def uncertainty_lines(info: Mapping[str, Any]) -> list[str]:
    """Where ``segment-stack --uncertainty`` wrote the uncertainty (nothing without it)."""
    if not info.get("uncertainty"):
        return []
    return [
        f"uncertainty -> {info['uncertainty']} (score per slice in stack.json; "
        "tomoseg suggest ranks them)"
    ]


def paths_lines(summary: Mapping[str, Any], out: Any) -> list[str]:
    """The result of ``paths``: counts, total length and where the files are."""
    unit = summary.get("unit") or "voxel"
    lines = [
        f"{plural(summary['objects'], 'path')}, "
        f"{plural(summary['branches'], 'branch', 'branches')}, "
        f"{plural(summary['junctions'], 'junction')}, "
        f"{plural(summary['end_points'], 'end point')}; total length "
        f"{summary['total_length']:.6g} {unit}",
        f"tables {out}/branches.csv, {out}/objects.csv; graph {out}/paths.graphml; "
        f"SWC {out}/swc/; preview {out}/preview.png",
    ]
    if summary.get("soma_class") is not None:
        lines.append(
            f"{plural(summary['soma_contacts'], 'path end')} "
            f"{'reaches' if summary['soma_contacts'] == 1 else 'reach'} "
            f"{plural(summary['somas_reached'], 'object')} of class {summary['soma_class']} "
            f"({out}/somas/)"
        )
    return lines


def objects_lines(summary: Mapping[str, Any], out: Any) -> list[str]:
    """The result of ``objects``: the count and files, and the detection scores vs a truth."""
    lines = [
        f"{plural(summary['count'], 'object')}; table {out}/objects.csv, summary "
        f"{out}/summary.json, meshes {out}/meshes/"
    ]
    sp = summary.get("split")
    if sp:
        units = summary.get("units", "")
        lines.append(
            f"split: {plural(sp['connected_components'], 'connected component')} -> "
            f"{plural(summary['count'], 'object')} ({sp['objects_split']} split; h "
            f"{sp['h']:.3g}, min distance {sp['min_distance']:.3g} {units})"
        )
    det = summary.get("detection")
    if det:
        lines.append(
            "vs truth: "
            + ", ".join(
                f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in det.items()
            )
        )
    return lines


def show_demo(result: Mapping[str, Any]) -> None:
    """Print the demo's comparison table and where its outputs are."""
    show_table(result["title"], [result["rows"]])
    run, out = result["run"], result["out"]
    say(
        f"done in {result['seconds']:.0f} s ({result['seconds_per_slice']:.2f} s per test "
        "slice). Outputs:"
    )
    say(f"  training curves   {run}/curves.png  (per-epoch metrics: {run}/metrics.csv)")
    say(f"  network report    {out}/evaluation/metrics.json, overlays in {out}/evaluation/panels/")
    say(f"  Otsu report       {out}/otsu/metrics.json, overlays in {out}/otsu/panels/")


def show_stack_demo(summary: Mapping[str, Any]) -> None:
    """Print the stack demo's objects against the 3D truth and where its outputs are."""
    det, out = summary["detection"], summary["out"]
    say(
        f"{plural(summary['count'], 'object')} found, {det['true_objects']} in the truth "
        f"(count error {100 * det['count_relative_error']:+.1f} %), detection precision "
        f"{det['precision']:.2f}, recall {det['recall']:.2f} ({det['match_rule']})"
    )
    say(f"  volume for napari  {out}/segmented/labels.zarr  (objects: {out}/objects/objects.zarr)")
    say(
        f"  table and meshes   {out}/objects/objects.csv, {out}/objects/meshes/, preview "
        f"{out}/objects/preview.png"
    )


def suggest_lines(result: Mapping[str, Any]) -> list[str]:
    """``tomoseg suggest``'s output: one line per suggested slice, then the stack's range."""
    scores = [s for s in result["scores"] if s == s]
    lines = [f"label next ({result['measure']}, most uncertain first, spread over z):"]
    lines += [
        f"  {s['rank']:>2}. slice {s['index']} ({s['id']}): uncertainty {s['score']:.3f}"
        for s in result["slices"]
    ]
    if scores:
        lines.append(
            f"{plural(len(scores), 'slice')} scored: uncertainty {min(scores):.3f} to "
            f"{max(scores):.3f}"
        )
    return lines


def show_export(result: Mapping[str, Any]) -> None:
    """What ``export`` wrote and how closely its weights reproduce tomoseg's probabilities."""
    say(f"wrote {result['path']} ({result['format']}) in {result['seconds']:.1f} s")
    for fmt, diff in result["max_abs_diff"].items():
        say(f"{fmt}: probabilities within {diff:.2g} of tomoseg's on the test input (fp32)")
    if result.get("sidecar"):
        say(f"normalisation and classes: {result['sidecar']}")
