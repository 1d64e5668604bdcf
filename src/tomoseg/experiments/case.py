"""One case of the crop sweep: train (or resume) its network, then evaluate it on the test split.

:func:`train_and_evaluate` is the library entry point of a case. The sweep runs each case in a
process of its own (``python -m tomoseg.experiments.case``, :func:`main`), so that cases run
side by side with their own threads or GPU and a crash costs one case; that process reports
its progress as JSON lines on stdout and stops at the next training batch once the sweep's
cancel file exists (:class:`FileToken`: a token that crosses processes, and nodes where the
sweep folder is shared).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import traceback
from dataclasses import asdict
from pathlib import Path

from tomoseg.config.schema import load_config
from tomoseg.errors import TomosegError
from tomoseg.experiments.cells import Case
from tomoseg.experiments.sweep_data import SweepData
from tomoseg.utils.files import loads_json
from tomoseg.utils.format import first_line
from tomoseg.utils.progress import Cancelled, CancelToken, ProgressCallback, ProgressEvent

#: the file in a sweep folder whose existence cancels the sweep's running cases
CANCEL_FILE = "cancel"
#: exit status of a case process that stopped because the sweep was cancelled
CANCELLED_EXIT = 3


class FileToken:
    """A cancel token set once ``path`` exists (``is_set()`` looks at the file system)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)

    def is_set(self) -> bool:
        """Whether the file exists."""
        return self.path.exists()


def case_config_overrides(case: Case) -> dict[str, int]:
    """What a case changes in the sweep's base config: crop size, crop count and seed."""
    return {"crop_size": case.size, "crops": case.count, "seed": case.seed}


def train_and_evaluate(
    case: Case,
    data: Path | SweepData,
    folder: Path,
    cfg_file: Path,
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    on_step=None,
) -> Path:
    """Train the case's network into ``folder/run`` (resuming it where ``checkpoints/last.ckpt``
    exists, else starting over) and evaluate it on the test split (or the test images) into
    ``folder/eval``.

    Args:
        case: the case (crop size, crop count, seed).
        data: the dataset folder (``train``, ``test``; ``val`` optional), or a
            :class:`~tomoseg.experiments.sweep_data.SweepData` (images/masks with test
            images/masks).
        folder: the case's folder (``<sweep>/cases/<case id>``).
        cfg_file: the sweep's base config (YAML).
        progress: receives the training's progress events (see
            :func:`tomoseg.training.trainer.train`).
        cancel: stops the training at the next batch (:class:`Cancelled`, the run resumable);
            checked again before the evaluation.
        on_step: called with ``"train"`` and then ``"evaluate"`` as each step starts.

    Returns:
        ``folder``.

    Raises:
        Cancelled: ``cancel`` was set.
        TomosegError: bad data or config.
    """
    from tomoseg.inference.evaluate import evaluate_run
    from tomoseg.training.trainer import train

    folder = Path(folder)
    data = SweepData.of(data)
    cfg = load_config(cfg_file, case_config_overrides(case))
    resume = (folder / "run" / "checkpoints" / "last.ckpt").is_file()
    if on_step is not None:
        on_step("train")
    train(
        data.train,
        folder / "run",
        cfg,
        resume=resume,
        overwrite=not resume,
        progress=progress,
        cancel=cancel,
    )
    if cancel is not None and cancel.is_set():
        raise Cancelled(f"sweep case {case.id} cancelled before its evaluation")
    if on_step is not None:
        on_step("evaluate")
    test, split = data.scored()
    evaluate_run(folder / "run", test, folder / "eval", split=split, overwrite=True)
    return folder


def case_command(
    case: Case, data: Path | SweepData, folder: Path, cfg_file: Path, cancel_file: Path
) -> list[str]:
    """The command line of a case's process (:func:`main`): a dataset folder as ``--data``,
    images/masks with their test images as ``--source`` (:meth:`SweepData.to_json`)."""
    data = SweepData.of(data)
    where = (
        ["--data", str(data.train.root)]
        if data.test is None and isinstance(data.train.describe(), str)
        else ["--source", data.to_json()]
    )
    return [
        sys.executable,
        "-m",
        "tomoseg.experiments.case",
        "--case",
        json.dumps(asdict(case)),
        *where,
        "--folder",
        str(folder),
        "--config",
        str(cfg_file),
        "--cancel-file",
        str(cancel_file),
    ]


def _emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    """A case's process: :func:`train_and_evaluate`, its progress as JSON lines on stdout
    (``{"step": ...}`` and the progress events), messages on stderr, ``error: ...`` as the
    last stderr line of a failure.

    Returns:
        0 when done, :data:`CANCELLED_EXIT` when cancelled, 1 on failure.
    """
    # Ctrl-C in a terminal reaches every process of the foreground group; it is the sweep
    # driver's to handle (it cancels the running cases through the cancel file, so a case stops
    # unrecorded and resumable instead of dying and being recorded as failed)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    p = argparse.ArgumentParser(prog="python -m tomoseg.experiments.case")
    p.add_argument("--case", required=True, help="the case as JSON (size, count, repeat, seed)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--data", type=Path, help="the dataset folder")
    where.add_argument("--source", help="the sweep's data as JSON (images/masks and test)")
    p.add_argument("--folder", required=True, type=Path)
    p.add_argument("--config", required=True, type=Path)
    p.add_argument("--cancel-file", required=True, type=Path)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    case = Case(**loads_json(args.case, "the case argument"))

    def report(event: ProgressEvent) -> None:
        _emit(
            {"kind": event.kind, "done": event.done, "total": event.total, "message": event.message}
        )

    try:
        data = args.data if args.source is None else SweepData.from_json(args.source)
        train_and_evaluate(
            case,
            data,
            args.folder,
            args.config,
            progress=report,
            cancel=FileToken(args.cancel_file),
            on_step=lambda step: _emit({"step": step}),
        )
    except Cancelled as exc:
        print(f"cancelled: {exc}", file=sys.stderr)
        return CANCELLED_EXIT
    except TomosegError as exc:
        print(f"error: {first_line(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - any crash is the case's failure, not the sweep's
        traceback.print_exc()
        print(f"error: {type(exc).__name__}: {first_line(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
