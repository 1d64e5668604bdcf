"""``tomoseg cluster-script``: ready-to-submit Slurm (sbatch) and PBS (qsub) job scripts.

The script runs one ordinary tomoseg command with the launcher it needs:

* ``train`` runs one process per GPU. Slurm: ``srun`` with ``--ntasks-per-node`` = GPUs, which
  Lightning's ``SLURMEnvironment`` detects by itself (ranks, world size, master address); the
  job asks for ``--signal=SIGUSR1@90`` and ``--requeue``, so Lightning requeues the job before
  its time runs out and the requeued job continues with ``--resume``. PBS: ``torchrun`` per
  node (``mpiexec`` starts one per node when there are several), with the c10d rendezvous on
  the first node (Lightning's ``TorchElasticEnvironment``). ``--devices G --num-nodes M`` are
  appended to the command.
* every other command (``segment-stack``, ``sweep``, ``evaluate``...) runs once per job; under
  Slurm the batch shell traps the early signal and requeues the job (these commands resume when
  rerun). ``--array N`` makes a job array whose element I runs ``segment-stack ... --part I/N``.
  A ``--backend ray`` command on several nodes gets a Ray cluster started on the job's nodes
  (head on the first) and ``--address`` pointing at it.

Nothing the user gives runs as shell code except ``env`` (a shell line the user writes on
purpose): every argument of the command is quoted with :func:`shlex.quote`, so ``$(...)``,
backquotes, ``;`` or newlines in a file name reach tomoseg as they are; only the variables the
script itself adds (the array index, the Ray address) are expanded. Header values (job name,
partition or queue, account) may not hold whitespace or control characters, which would end
the ``#SBATCH`` / ``#PBS`` line and start a shell line.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tomoseg.errors import TomosegError

SCHEDULERS = ("slurm", "pbs")
RAY_PORT = 6379
RDZV_PORT = 29500
_TIME = re.compile(r"(?:(\d+)-)?(\d{1,4}):([0-5]\d):([0-5]\d)")
#: characters a scheduler header value may hold (job names, partitions, queues, accounts)
_HEADER_VALUE = re.compile(r"[A-Za-z0-9._+@%:,=/-]+")


@dataclass
class JobSpec:
    """What to ask the scheduler for."""

    scheduler: str
    command: list[str]
    nodes: int = 1
    gpus_per_node: int = 1
    time: str = "01:00:00"
    partition: str | None = None  # Slurm partition or PBS queue
    account: str | None = None
    env: str | None = None
    array: int | None = None
    job_name: str | None = None


def parse_walltime(value: str) -> tuple[int, int, int, int]:
    """``HH:MM:SS`` or ``D-HH:MM:SS`` as (days, hours, minutes, seconds).

    Raises:
        TomosegError: another format or a zero time.
    """
    m = _TIME.fullmatch(value.strip())
    if not m:
        raise TomosegError(f"time={value!r} must be HH:MM:SS or D-HH:MM:SS")
    d, h, mi, s = (int(g or 0) for g in m.groups())
    if d == h == mi == s == 0:
        raise TomosegError(f"time={value!r} must be longer than 00:00:00")
    return d, h, mi, s


def _normalise_command(command: list[str]) -> list[str]:
    """``tomoseg <sub> ...`` (a leading ``tomoseg`` is optional); checks a subcommand is there."""
    cmd = [str(c) for c in command]
    if cmd and Path(cmd[0]).name == "tomoseg":
        cmd = cmd[1:]
    if not cmd or cmd[0].startswith("-"):
        raise TomosegError(
            "give the tomoseg command to run, e.g. command=['train', ...] (on the command "
            "line: after --, as in tomoseg cluster-script slurm -- tomoseg train ...)"
        )
    if not re.fullmatch(r"[a-z][a-z0-9-]*", cmd[0]):
        raise TomosegError(f"command: {cmd[0]!r} is not a tomoseg command (e.g. train)")
    return cmd


class _Expanded(str):
    """An argument the script itself adds that holds one of its shell variables (double-quoted,
    expanded when the job runs); every other argument is quoted with :func:`shlex.quote`."""


def _quoted(args: list[str]) -> str:
    """``args`` as a shell command line: each one reaches the program exactly as given."""
    return " ".join(f'"{a}"' if isinstance(a, _Expanded) else shlex.quote(a) for a in args)


def _check_header(name: str, value: str | None) -> None:
    """Refuse a header value that would end its ``#SBATCH``/``#PBS`` line or split it.

    Raises:
        TomosegError: ``value`` is empty or holds whitespace, a control character or a
            character outside letters, digits and ``._+@%:,=/-``.
    """
    if value is not None and not _HEADER_VALUE.fullmatch(value):
        raise TomosegError(
            f"{name}={value!r} may hold only letters, digits and ._+@%:,=/- (no spaces, "
            "newlines or other control characters: they would end the scheduler's header line)"
        )


def _has(cmd: list[str], *opts: str) -> bool:
    return any(c in opts or any(c.startswith(o + "=") for o in opts) for c in cmd)


def _value(cmd: list[str], opt: str) -> str | None:
    for i, c in enumerate(cmd):
        if c == opt and i + 1 < len(cmd):
            return cmd[i + 1]
        if c.startswith(opt + "="):
            return c.split("=", 1)[1]
    return None


def _check(spec: JobSpec) -> list[str]:
    if spec.scheduler not in SCHEDULERS:
        raise TomosegError(f"scheduler must be slurm or pbs, got {spec.scheduler!r}")
    cmd = _normalise_command(spec.command)
    if spec.nodes < 1:
        raise TomosegError(f"nodes={spec.nodes} must be at least 1")
    if spec.gpus_per_node < 0:
        raise TomosegError(f"gpus_per_node={spec.gpus_per_node} must be 0 (CPU nodes) or more")
    parse_walltime(spec.time)
    _check_header("job_name", spec.job_name)
    _check_header("partition", spec.partition)
    _check_header("account", spec.account)
    if spec.array is not None:
        if cmd[0] != "segment-stack":
            raise TomosegError(
                f"array={spec.array} splits a segment-stack command; it makes no sense for {cmd[0]}"
            )
        if spec.array < 1:
            raise TomosegError(f"array={spec.array} must be at least 1")
        if _has(cmd, "--part"):
            raise TomosegError(
                f"array={spec.array} adds the part option (I/N) itself; leave it out of the command"
            )
    if cmd[0] == "train":
        for opt in ("--devices", "--num-nodes"):
            if _has(cmd, opt):
                raise TomosegError(
                    f"{opt} is set from nodes={spec.nodes} and gpus_per_node={spec.gpus_per_node}; "
                    "leave it out of the command"
                )
    return cmd


def _train_args(spec: JobSpec) -> list[str]:
    extra = ["--devices", str(max(spec.gpus_per_node, 1)), "--num-nodes", str(spec.nodes)]
    if spec.gpus_per_node == 0:
        extra = ["--device", "cpu", *extra]
    if spec.nodes * max(spec.gpus_per_node, 1) > 1:
        extra += ["--strategy", "ddp"]
    return extra


def _pbs_walltime(value: str) -> str:
    d, h, m, s = parse_walltime(value)
    return f"{24 * d + h:02d}:{m:02d}:{s:02d}"


def _ray_cluster_slurm(gpus: int) -> list[str]:
    return [
        "# a Ray cluster on the job's nodes: the head on the first, a worker on each other",
        'nodes=($(scontrol show hostnames "$SLURM_JOB_NODELIST"))',
        "head_ip=$(srun --overlap --nodes=1 --ntasks=1 -w \"${nodes[0]}\" hostname --ip-address | awk '{print $1}')",
        f"ray_address=$head_ip:{RAY_PORT}",
        f'srun --overlap --nodes=1 --ntasks=1 -w "${{nodes[0]}}" ray start --head --node-ip-address="$head_ip" '
        f"--port={RAY_PORT} --num-gpus={gpus} --include-dashboard=false --block &",
        "sleep 15",
        'for node in "${nodes[@]:1}"; do',
        f'  srun --overlap --nodes=1 --ntasks=1 -w "$node" ray start --address="$ray_address" --num-gpus={gpus} --block &',
        "done",
        "sleep 15",
    ]


def _ray_cluster_pbs(gpus: int) -> list[str]:
    return [
        "# a Ray cluster on the job's nodes: the head on the first, a worker on each other",
        'mapfile -t nodes < <(sort -u "$PBS_NODEFILE")',
        "head_ip=$(hostname --ip-address | awk '{print $1}')",
        f"ray_address=$head_ip:{RAY_PORT}",
        f'ray start --head --node-ip-address="$head_ip" --port={RAY_PORT} --num-gpus={gpus} '
        "--include-dashboard=false",
        'for node in "${nodes[@]:1}"; do',
        f'  mpiexec -n 1 -host "$node" ray start --address="$ray_address" --num-gpus={gpus} --block &',
        "done",
        "sleep 15",
    ]


def job_script(spec: JobSpec) -> str:
    """The text of a job script for ``spec`` (see the module docstring for what it does).

    Raises:
        TomosegError: no command, a bad time, node or GPU count, or ``--array`` misused.
    """
    cmd = _check(spec)
    sub = cmd[0]
    name = spec.job_name or f"tomoseg-{sub}"
    nodes, gpus = spec.nodes, spec.gpus_per_node
    is_train = sub == "train"
    ray_multi = _value(cmd, "--backend") == "ray" and nodes > 1 and not is_train
    if is_train:
        cmd = cmd + _train_args(spec)
    slurm = spec.scheduler == "slurm"
    part_var = "${SLURM_ARRAY_TASK_ID}" if slurm else "${PBS_ARRAY_INDEX}"
    if spec.array is not None:
        cmd = cmd + ["--part", _Expanded(f"{part_var}/{spec.array}")]
    if ray_multi and not _has(cmd, "--address"):
        cmd = cmd + ["--address", _Expanded("$ray_address")]
    lines = ["#!/bin/bash"]
    if slurm:
        d = [
            f"--job-name={name}",
            f"--nodes={nodes}",
            f"--ntasks-per-node={max(gpus, 1) if is_train else 1}",
        ]
        if gpus:
            d.append(f"--gpus-per-node={gpus}")
        d.append(f"--time={spec.time.strip()}")
        if spec.partition:
            d.append(f"--partition={spec.partition}")
        if spec.account:
            d.append(f"--account={spec.account}")
        if spec.array is not None:
            d.append(f"--array=1-{spec.array}")
        # train: Lightning's SLURMEnvironment catches SIGUSR1 in every task and requeues;
        # others: the batch shell (B:) catches it and requeues (the command resumes when rerun)
        d.append("--signal=SIGUSR1@90" if is_train else "--signal=B:USR1@90")
        d.append("--requeue")
        d.append(
            f"--output={name}-%A_%a.out" if spec.array is not None else f"--output={name}-%j.out"
        )
        lines += [f"#SBATCH {x}" for x in d]
    else:
        select = f"select={nodes}:ncpus={max(gpus, 1) * 8}"
        if gpus:
            select += f":ngpus={gpus}"
        lines += [
            f"#PBS -N {name}",
            f"#PBS -l {select}",
            f"#PBS -l walltime={_pbs_walltime(spec.time)}",
        ]
        if spec.partition:
            lines.append(f"#PBS -q {spec.partition}")
        if spec.account:
            lines.append(f"#PBS -A {spec.account}")
        if spec.array is not None:
            lines.append(f"#PBS -J 1-{spec.array}")
        lines += ["#PBS -j oe", "#PBS -r y"]
    lines += ["", "set -euo pipefail"]
    if not slurm:
        lines.append('cd "$PBS_O_WORKDIR"')
    if spec.env:
        lines.append(spec.env)
    lines.append("")

    if is_train:
        out_dir = _value(cmd, "--out")
        if slurm:
            if out_dir and not _has(cmd, "--resume", "--overwrite"):
                lines += [
                    "# a requeued job continues the run it started",
                    'resume=""',
                    f'if [ "${{SLURM_RESTART_COUNT:-0}}" -gt 0 ] && [ -f {shlex.quote(out_dir + "/config.yaml")} ]; then resume=--resume; fi',
                ]
                lines.append("srun --kill-on-bad-exit=1 tomoseg " + _quoted(cmd) + " $resume")
            else:
                lines.append("srun --kill-on-bad-exit=1 tomoseg " + _quoted(cmd))
        else:
            per_node = max(gpus, 1)
            launch = (
                f"torchrun --nnodes={nodes} --nproc-per-node={per_node} "
                + (
                    "--standalone"
                    if nodes == 1
                    else f'--rdzv-backend=c10d --rdzv-endpoint="$head:{RDZV_PORT}" --rdzv-id="$PBS_JOBID"'
                )
                + " -m tomoseg.cli "
                + _quoted(cmd)
            )
            if nodes == 1:
                lines.append(launch)
            else:
                lines += [
                    "# one torchrun per node; they meet at the first node (c10d rendezvous)",
                    'head=$(head -n 1 "$PBS_NODEFILE")',
                    f"mpiexec -n {nodes} --ppn 1 {launch}",
                ]
    else:
        if ray_multi:
            lines += _ray_cluster_slurm(gpus) if slurm else _ray_cluster_pbs(gpus)
            lines.append("")
        if slurm:
            lines += [
                "# requeue shortly before the time limit; the command resumes when rerun",
                "trap 'scontrol requeue \"$SLURM_JOB_ID\"' USR1",
                "tomoseg " + _quoted(cmd) + " &",
                "wait $!",
            ]
        else:
            lines.append("tomoseg " + _quoted(cmd))
    return "\n".join(lines) + "\n"


def submit(scheduler: str, script: str, path: Path | None) -> str:
    """Submit a script with ``sbatch`` / ``qsub`` (the file ``path`` if given, else on stdin).

    Returns:
        The scheduler's answer (the job id line).

    Raises:
        TomosegError: the submit command is not on PATH or refuses the script.
    """
    exe = "sbatch" if scheduler == "slurm" else "qsub"
    found = shutil.which(exe)
    if found is None:
        raise TomosegError(
            f"submit=True: {exe} is not on PATH (not a {scheduler.upper()} login node?); "
            "submit the printed script there, or leave out submit=True"
        )
    args = [found] + ([str(path)] if path is not None else [])
    try:
        proc = subprocess.run(
            args,
            input=None if path is not None else script,
            capture_output=True,
            text=True,
            timeout=120,
            env=dict(os.environ),
        )
    except subprocess.TimeoutExpired:
        raise TomosegError(f"submit=True: {exe} did not answer within 120 s") from None
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        raise TomosegError(
            f"submit=True: {exe} refused the script: {msg[-1] if msg else proc.returncode}"
        )
    return proc.stdout.strip()
