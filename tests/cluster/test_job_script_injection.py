"""Generated job scripts run exactly the command they were given, and nothing else.

Each script is run with bash, with fake ``tomoseg``, ``srun``, ``mpiexec``, ``torchrun``,
``ray``, ``scontrol``, ``hostname`` and ``sleep`` first on PATH: each records the arguments it
received (JSON, one line per call). Arguments hold ``$(...)``, backquotes, ``;``, newlines,
quotes and spaces; the test asserts they arrive unchanged and that no file appeared.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tomoseg.cluster.jobscript import JobSpec, job_script
from tomoseg.errors import TomosegError

HOSTILE = [
    "$(touch pwned1)",
    "`touch pwned2`",
    "a; touch pwned3",
    "line one\ntouch pwned4",
    'it\'s "quoted"',
    "two  words",
    "${HOME}",
    "*",
    "--name=$(touch pwned5)",
    "",
    "back\\slash",
    "a && touch pwned6 #",
    "'; touch pwned7; '",
]

RECORDER = """\
import json, os, sys
name = os.environ["FAKE"]
with open(os.environ["RECORD"], "a") as f:
    f.write(json.dumps({"prog": name, "argv": sys.argv[1:]}) + "\\n")
if name == "scontrol" and sys.argv[1:3] == ["show", "hostnames"]:
    print("nodeA"); print("nodeB")
if name == "hostname" or (name == "srun" and "hostname" in sys.argv):
    print("10.0.0.1")
"""

FAKES = ("tomoseg", "srun", "mpiexec", "torchrun", "ray", "scontrol", "hostname", "sleep")


def _run(tmp_path: Path, spec: JobSpec, **env: str) -> list[dict]:
    """Run the script of ``spec`` with the fakes; the calls they recorded."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    rec = bindir / "record.py"
    rec.write_text(RECORDER)
    for name in FAKES:
        exe = bindir / name
        exe.write_text(f'#!/bin/sh\nFAKE={name} exec {sys.executable} {rec} "$@"\n')
        exe.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("nodeA\nnodeA\nnodeB\n")
    script = tmp_path / "job.sh"
    script.write_text(job_script(spec))
    record = tmp_path / "record.jsonl"
    record.unlink(missing_ok=True)
    full_env = {
        "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "RECORD": str(record),
        "PBS_O_WORKDIR": str(work),
        "PBS_NODEFILE": str(nodefile),
        "PBS_JOBID": "77.pbs",
        "SLURM_JOB_NODELIST": "node[A-B]",
        "SLURM_JOB_ID": "42",
        **env,
    }
    proc = subprocess.run(
        ["bash", str(script)], cwd=work, env=full_env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert not list(tmp_path.rglob("pwned*")), "the script ran a command it was not given"
    return [json.loads(line) for line in record.read_text().splitlines()]


def _calls(calls: list[dict], prog: str) -> list[list[str]]:
    return [c["argv"] for c in calls if c["prog"] == prog]


def test_slurm_train_passes_every_argument_unchanged(tmp_path):
    cmd = ["train", "--data", *HOSTILE, "--out", "runs/$(touch pwned8)"]
    calls = _run(tmp_path, JobSpec("slurm", cmd, gpus_per_node=2), SLURM_RESTART_COUNT="1")
    assert _calls(calls, "srun") == [
        ["--kill-on-bad-exit=1", "tomoseg", *cmd, "--devices", "2", "--num-nodes", "1", "--strategy", "ddp"]
    ]  # fmt: skip


def test_slurm_array_and_ray_expand_only_their_own_variables(tmp_path):
    cmd = ["segment-stack", "run", *HOSTILE, "--out", "seg"]
    calls = _run(tmp_path, JobSpec("slurm", cmd, array=8), SLURM_ARRAY_TASK_ID="3")
    assert _calls(calls, "tomoseg") == [[*cmd, "--part", "3/8"]]
    cmd = ["sweep", "--data", *HOSTILE, "--backend", "ray"]
    calls = _run(tmp_path, JobSpec("slurm", cmd, nodes=2))
    assert _calls(calls, "tomoseg") == [[*cmd, "--address", "10.0.0.1:6379"]]


def test_pbs_scripts_pass_every_argument_unchanged(tmp_path):
    cmd = ["train", "--data", *HOSTILE]
    calls = _run(tmp_path, JobSpec("pbs", cmd))
    assert _calls(calls, "torchrun") == [
        ["--nnodes=1", "--nproc-per-node=1", "--standalone", "-m", "tomoseg.cli", *cmd,
         "--devices", "1", "--num-nodes", "1"]
    ]  # fmt: skip
    calls = _run(tmp_path, JobSpec("pbs", cmd, nodes=2))
    assert _calls(calls, "mpiexec") == [
        ["-n", "2", "--ppn", "1", "torchrun", "--nnodes=2", "--nproc-per-node=1",
         "--rdzv-backend=c10d", "--rdzv-endpoint=nodeA:29500", "--rdzv-id=77.pbs",
         "-m", "tomoseg.cli", *cmd, "--devices", "1", "--num-nodes", "2", "--strategy", "ddp"]
    ]  # fmt: skip
    cmd = ["segment-stack", "run", *HOSTILE, "--out", "seg"]
    calls = _run(tmp_path, JobSpec("pbs", cmd, array=4), PBS_ARRAY_INDEX="2")
    assert _calls(calls, "tomoseg") == [[*cmd, "--part", "2/4"]]
    cmd = ["sweep", *HOSTILE, "--backend", "ray"]
    calls = _run(tmp_path, JobSpec("pbs", cmd, nodes=2))
    assert _calls(calls, "tomoseg") == [[*cmd, "--address", "10.0.0.1:6379"]]


BAD_HEADERS = [
    ("--job-name", "job\ntouch pwned", "--job-name"),
    ("--job-name", "two words", "--job-name"),
    ("--partition", "gpu\n#SBATCH --account=other", "--partition"),
    ("--queue", "q\rtouch pwned", "--partition"),
    ("--account", "proj\x00", "--account"),
    ("--account", "proj\ttab", "--account"),
]


@pytest.mark.parametrize("scheduler", ["slurm", "pbs"])
@pytest.mark.parametrize("option, value, named", BAD_HEADERS)
def test_control_characters_in_header_values_are_refused(run_cli, scheduler, option, value, named):
    if option == "--queue" and scheduler == "slurm":
        option = "--partition"
    code, out, err = run_cli("cluster-script", scheduler, option, value, "--", "train")
    lines = err.strip().splitlines()
    assert code == 1 and out == "" and len(lines) == 1, err
    assert lines[0].startswith("error: ") and named in lines[0], err


@pytest.mark.parametrize("field", ["job_name", "partition", "account"])
def test_header_values_are_checked_in_the_api(field):
    with pytest.raises(TomosegError, match=field):
        job_script(JobSpec("slurm", ["train"], **{field: "x\n#SBATCH --wrap=id"}))


def test_a_subcommand_with_shell_characters_is_refused(run_cli):
    code, out, err = run_cli("cluster-script", "slurm", "--", "train\ntouch pwned")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "not a tomoseg command" in err
