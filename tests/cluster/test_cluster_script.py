"""tomoseg cluster-script: expected Slurm / PBS scripts, --out, --submit with a fake sbatch."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from tomoseg.cluster.jobscript import JobSpec, job_script, parse_walltime

SLURM_TRAIN = """\
#!/bin/bash
#SBATCH --job-name=tomoseg-train
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-node=4
#SBATCH --time=12:00:00
#SBATCH --partition=gpu
#SBATCH --account=proj
#SBATCH --signal=SIGUSR1@90
#SBATCH --requeue
#SBATCH --output=tomoseg-train-%j.out

set -euo pipefail
source .venv/bin/activate

# a requeued job continues the run it started
resume=""
if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ] && [ -f 'runs/my run/config.yaml' ]; then resume=--resume; fi
srun --kill-on-bad-exit=1 tomoseg train --data d --out 'runs/my run' --devices 4 --num-nodes 2 --strategy ddp $resume
"""

PBS_TRAIN = """\
#!/bin/bash
#PBS -N tomoseg-train
#PBS -l select=2:ncpus=32:ngpus=4
#PBS -l walltime=36:00:00
#PBS -q gpuq
#PBS -j oe
#PBS -r y

set -euo pipefail
cd "$PBS_O_WORKDIR"
module load python

# one torchrun per node; they meet at the first node (c10d rendezvous)
head=$(head -n 1 "$PBS_NODEFILE")
mpiexec -n 2 --ppn 1 torchrun --nnodes=2 --nproc-per-node=4 --rdzv-backend=c10d --rdzv-endpoint="$head:29500" --rdzv-id="$PBS_JOBID" -m tomoseg.cli train --data d --out r --devices 4 --num-nodes 2 --strategy ddp
"""

SLURM_ARRAY = """\
#!/bin/bash
#SBATCH --job-name=tomoseg-segment-stack
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --time=01:00:00
#SBATCH --array=1-8
#SBATCH --signal=B:USR1@90
#SBATCH --requeue
#SBATCH --output=tomoseg-segment-stack-%A_%a.out

set -euo pipefail

# requeue shortly before the time limit; the command resumes when rerun
trap 'scontrol requeue "$SLURM_JOB_ID"' USR1
tomoseg segment-stack run stack.tif --out seg --part "${SLURM_ARRAY_TASK_ID}/8" &
wait $!
"""


def test_slurm_train_two_nodes():
    spec = JobSpec(
        "slurm",
        ["tomoseg", "train", "--data", "d", "--out", "runs/my run"],
        nodes=2,
        gpus_per_node=4,
        time="12:00:00",
        partition="gpu",
        account="proj",
        env="source .venv/bin/activate",
    )
    assert job_script(spec) == SLURM_TRAIN


def test_pbs_train_two_nodes_days_to_hours():
    spec = JobSpec(
        "pbs",
        ["train", "--data", "d", "--out", "r"],
        nodes=2,
        gpus_per_node=4,
        time="1-12:00:00",
        partition="gpuq",
        env="module load python",
    )
    assert job_script(spec) == PBS_TRAIN


def test_slurm_array_segment_stack():
    spec = JobSpec("slurm", ["segment-stack", "run", "stack.tif", "--out", "seg"], array=8)
    assert job_script(spec) == SLURM_ARRAY


def test_single_node_pbs_train_is_standalone_and_pbs_array():
    s = job_script(JobSpec("pbs", ["train", "--data", "d", "--out", "r"], gpus_per_node=2))
    assert "torchrun --nnodes=1 --nproc-per-node=2 --standalone -m tomoseg.cli train" in s
    assert "mpiexec" not in s
    s = job_script(JobSpec("pbs", ["segment-stack", "r", "i", "--out", "o"], array=4))
    assert "#PBS -J 1-4" in s and '--part "${PBS_ARRAY_INDEX}/4"' in s


def test_ray_sweep_on_several_nodes_starts_a_cluster():
    cmd = ["sweep", "--data", "d", "--out", "s", "--backend", "ray"]
    s = job_script(JobSpec("slurm", cmd, nodes=4, gpus_per_node=8))
    assert "ray start --head" in s and "ray start --address" in s
    assert 'tomoseg sweep --data d --out s --backend ray --address "$ray_address" &' in s
    assert "#SBATCH --ntasks-per-node=1" in s
    # one node: Ray starts locally inside the command, no cluster set-up
    assert "ray start" not in job_script(JobSpec("slurm", cmd, gpus_per_node=8))


def test_scripts_are_valid_bash(tmp_path):
    for spec in (
        JobSpec("slurm", ["train", "--data", "d", "--out", "r"], nodes=2, gpus_per_node=4),
        JobSpec("pbs", ["train", "--data", "d", "--out", "r"], nodes=2, gpus_per_node=4),
        JobSpec("slurm", ["sweep", "--backend", "ray"], nodes=3),
        JobSpec("pbs", ["sweep", "--backend", "ray"], nodes=3),
        JobSpec("slurm", ["segment-stack", "a", "b", "--out", "c"], array=3),
    ):
        f = tmp_path / "job.sh"
        f.write_text(job_script(spec))
        subprocess.run(["bash", "-n", str(f)], check=True)


@pytest.mark.parametrize(
    "value, ok", [("01:00:00", True), ("2-00:30:00", True), ("1:00", False), ("00:00:00", False)]
)
def test_walltime(value, ok):
    if ok:
        parse_walltime(value)
    else:
        with pytest.raises(ValueError):
            parse_walltime(value)


@pytest.mark.parametrize(
    "args, match",
    [
        (["cluster-script", "slurm"], "give the tomoseg command"),
        (["cluster-script", "slurm", "--", "tomoseg"], "give the tomoseg command"),
        (["cluster-script", "lsf", "--", "train"], "slurm or pbs"),
        (["cluster-script", "slurm", "--time", "soon", "--", "train"], "--time"),
        (["cluster-script", "slurm", "--nodes", "0", "--", "train"], "--nodes"),
        (["cluster-script", "slurm", "--array", "4", "--", "train"], "--array"),
        (["cluster-script", "slurm", "--", "train", "--devices", "2"], "--devices"),
        (
            ["cluster-script", "slurm", "--partition", "a", "--queue", "b", "--", "train"],
            "not both",
        ),
    ],
)
def test_bad_input_is_one_error_line(run_cli, args, match):
    code, out, err = run_cli(*args)
    assert code != 0 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and match in lines[0], err


def test_out_writes_the_script(run_cli, tmp_path):
    f = tmp_path / "job.sbatch"
    code, out, err = run_cli(
        "cluster-script", "slurm", "--out", f, "--array", "8", "--",
        "segment-stack", "run", "stack.tif", "--out", "seg",
    )  # fmt: skip
    assert code == 0 and out == "" and f.read_text() == SLURM_ARRAY
    assert os.access(f, os.X_OK)


def _fake(tmp_path: Path, name: str, body: str) -> dict[str, str]:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    exe = bindir / name
    exe.write_text("#!/bin/bash\n" + body)
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}


def test_submit_with_a_fake_sbatch(run_cli, tmp_path, monkeypatch):
    got = tmp_path / "submitted.sh"
    env = _fake(tmp_path, "sbatch", f'cat > {got}\necho "Submitted batch job 4242"\n')
    monkeypatch.setenv("PATH", env["PATH"])
    code, out, err = run_cli(
        "cluster-script", "slurm", "--submit", "--array", "8", "--",
        "segment-stack", "run", "stack.tif", "--out", "seg",
    )  # fmt: skip
    assert code == 0, err
    assert "Submitted batch job 4242" in out and got.read_text() == SLURM_ARRAY
    # with --out, sbatch gets the file
    f = tmp_path / "job.sh"
    _fake(tmp_path, "sbatch", f'cp "$1" {got}\necho "Submitted batch job 4243"\n')
    code, out, err = run_cli(
        "cluster-script", "slurm", "--submit", "--out", f, "--array", "8", "--",
        "segment-stack", "run", "stack.tif", "--out", "seg",
    )  # fmt: skip
    assert code == 0 and "4243" in out and got.read_text() == SLURM_ARRAY


def test_submit_refused_or_missing(run_cli, tmp_path, monkeypatch):
    env = _fake(tmp_path, "qsub", 'echo "qsub: Unknown queue" >&2\nexit 3\n')
    monkeypatch.setenv("PATH", env["PATH"])
    code, out, err = run_cli("cluster-script", "pbs", "--submit", "--", "train")
    assert (
        code == 1 and err.strip() == "error: --submit: qsub refused the script: qsub: Unknown queue"
    )
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    code, out, err = run_cli("cluster-script", "slurm", "--submit", "--", "train")
    assert code == 1 and "sbatch is not on PATH" in err and len(err.strip().splitlines()) == 1
