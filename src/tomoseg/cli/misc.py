"""``version``, ``demo`` and ``cluster-script``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from tomoseg.cli import render
from tomoseg.cli.options import Overwrite
from tomoseg.errors import TomosegError


def version() -> None:
    """Print the tomoseg version."""
    from tomoseg import __version__

    render.say(__version__)


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
    from tomoseg.cli.cancel import cancel_on_interrupt
    from tomoseg.experiments.demo import run_demo, run_stack_demo

    if stack and out == Path("tomoseg-demo"):
        out = Path("tomoseg-stack-demo")
    job = run_stack_demo if stack else run_demo
    with render.progress_bar() as show, cancel_on_interrupt() as cancel:
        result = job(out, overwrite=overwrite, progress=show, cancel=cancel)
    (render.show_stack_demo if stack else render.show_demo)(result)


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

    if partition and queue:
        raise TomosegError("give --partition (Slurm) or --queue (PBS), not both")
    spec = JobSpec(
        scheduler=scheduler.lower(), command=list(command or []), nodes=nodes,
        gpus_per_node=gpus_per_node, time=time, partition=partition or queue, account=account,
        env=env, array=array, job_name=job_name,
    )  # fmt: skip
    text = job_script(spec)
    if out is not None:
        _write_script(out, text)
    elif not submit:
        sys.stdout.write(text)
    if submit:
        render.say(submit_script(spec.scheduler, text, out))


def _write_script(out: Path, text: str) -> None:
    """Write an executable job script and say so on stderr (stdout may be piped to a shell)."""
    from tomoseg.io.writers import write_text

    write_text(out, text)
    out.chmod(0o755)
    render.err_console.print(f"job script written to {out}", highlight=False)
