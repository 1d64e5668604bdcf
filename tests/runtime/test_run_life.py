"""A run's life on disk: complete or saying it is not, one writer at a time, checkpoints written
atomically under short temporary names and never loaded as code, paths relative to the run."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import socket
from pathlib import Path

import pytest
import torch
from conftest import TINY_TRAIN, make_dataset

import tomoseg
from tomoseg.config.schema import load_config
from tomoseg.errors import TomosegError
from tomoseg.inference.predictor import Predictor
from tomoseg.io.locks import LOCK_FILE, FolderLock
from tomoseg.io.writers import atomic_write, write_text
from tomoseg.runtime.checkpoint import load_run
from tomoseg.training.checkpoint_io import RunCheckpointIO
from tomoseg.training.trainer import remove_interrupted_writes, train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(one_thread, tmp_path_factory) -> tuple[Path, Path]:
    """A dataset and a finished one-epoch run of it."""
    root = tmp_path_factory.mktemp("life")
    data = make_dataset(root / "data", shape=(40, 48))
    run = train(data, root / "run", load_config(None, {**TINY_TRAIN, "precision": "32"}))
    return data, run


def _incomplete_copy(run: Path, dest: Path) -> Path:
    """A copy of ``run`` whose run.json says what an interrupted training leaves."""
    shutil.copytree(run, dest)
    record = json.loads((dest / "run.json").read_text())
    record["config"]["epochs"] = 3
    record.update(complete=False, epochs_done=1)
    (dest / "run.json").write_text(json.dumps(record))
    return dest


def test_a_finished_run_says_so(trained):
    _, run = trained
    record = json.loads((run / "run.json").read_text())
    assert record["complete"] is True and record["epochs_done"] == 1
    assert not (run / LOCK_FILE).exists()  # the lock goes with its writer


def test_every_loader_refuses_an_incomplete_run_unless_told(trained, tmp_path, run_cli):
    data, run = trained
    cut = _incomplete_copy(run, tmp_path / "cut")
    want = f"run {cut} is incomplete (1 of 3 epochs trained; interrupted, or still training)"
    for load in (
        lambda: load_run(cut),
        lambda: load_run(cut / "last.safetensors"),  # a weights file of the run too
        lambda: Predictor.from_run(cut, device="cpu"),
        lambda: tomoseg.Run(cut).predictor(device="cpu"),
    ):
        with pytest.raises(TomosegError, match="allow_incomplete=True") as exc:
            load()
        assert str(exc.value).startswith(want)
    assert load_run(cut, allow_incomplete=True).classes == ["background", "fg"]
    assert Predictor.from_run(cut, device="cpu", allow_incomplete=True).classes
    images = data / "test" / "images"
    for args in (
        ["predict", cut, images, "--out", tmp_path / "p"],
        ["evaluate", cut, "--data", data, "--out", tmp_path / "e"],
        ["tune", cut, "--data", data, "--overwrite"],
        ["segment-stack", cut, images, "--out", tmp_path / "s"],
    ):
        code, _, err = run_cli(*args, "--device", "cpu")
        assert code == 1 and err.count("\n") == 1, (args[0], err)
        assert err.startswith(f"error: {want}") and "--allow-incomplete" in err, err
        assert "--resume" in err and "allow_incomplete" not in err, err
    code, out, err = run_cli(
        "predict", cut, images, "--out", tmp_path / "p", "--device", "cpu", "--allow-incomplete"
    )
    assert code == 0 and "2 masks written" in out, err


def test_runs_written_before_the_record_are_complete(trained, tmp_path):
    _, run = trained
    old = shutil.copytree(run, tmp_path / "old")
    record = json.loads((old / "run.json").read_text())
    del record["complete"], record["epochs_done"]
    (old / "run.json").write_text(json.dumps(record))
    assert load_run(old).classes == ["background", "fg"]


def test_tune_refuses_other_data_and_keeps_the_decision_unless_told(trained, tmp_path, run_cli):
    data, run = trained
    copy = shutil.copytree(run, tmp_path / "run")
    before = (copy / "decision.json").read_bytes()
    other = make_dataset(tmp_path / "mito", shape=(40, 48), classes=("background", "mito"))
    code, _, err = run_cli("tune", copy, "--data", other, "--device", "cpu", "--overwrite")
    assert code == 1 and err.count("\n") == 1, err
    assert "trained on classes ['background', 'fg'] but the data has" in err, err
    code, _, err = run_cli("tune", copy, "--data", data, "--device", "cpu")
    assert code == 1 and err.count("\n") == 1, err
    assert "already holds a tuned decision (decision.json); use --overwrite" in err, err
    assert (copy / "decision.json").read_bytes() == before
    code, out, err = run_cli("tune", copy, "--data", data, "--device", "cpu", "--overwrite")
    assert code == 0 and "decision" in out, err


def test_temporary_names_are_short_and_leftovers_are_removed(tmp_path):
    long = tmp_path / ("n" * 236 + ".tif")  # 240 characters: a valid name
    seen = []
    atomic_write(long, lambda t: (seen.append(t.name), t.write_bytes(b"x"))[1], durable=True)
    assert long.read_bytes() == b"x" and len(seen[0]) <= 36 and seen[0].endswith(".tif")
    assert not (tmp_path / seen[0]).exists()
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    former = [  # what a kill between a checkpoint and its export left before
        run / ".last.safetensors.x1y2z3w4.tmp.safetensors",
        run / "checkpoints" / ".last.ckpt.a1b2c3d4.tmp.ckpt",
    ]
    for f in former:
        f.write_bytes(b"half")
    write_text(run / "keep.txt", "kept")
    (run / ".hidden.tmp.note").write_text("not a temporary")  # not of the former naming
    assert sorted(remove_interrupted_writes(run)) == sorted(former)
    assert sorted(p.name for p in run.iterdir()) == [".hidden.tmp.note", "checkpoints", "keep.txt"]


def test_a_folder_has_one_writer(tmp_path, trained, run_cli):
    data, trained_run = trained
    run = shutil.copytree(trained_run, tmp_path / "run")
    with FolderLock(run, "run folder"):
        with pytest.raises(TomosegError) as exc:
            FolderLock(run, "run folder").acquire()
        holder = f"process {os.getpid()} on {socket.gethostname()}"
        assert f"run folder {run} is being written by {holder}" in str(exc.value)
        for args in (
            ["train", "--out", run, "--resume", "--epochs", "2"],
            ["tune", run, "--data", data, "--overwrite", "--device", "cpu"],
        ):
            code, _, err = run_cli(*args)
            assert code == 1 and err.count("\n") == 1 and holder in err, err
    assert not (run / LOCK_FILE).exists()
    # a lock file a dead process left (kill -9): taken over
    run.mkdir(exist_ok=True)
    (run / LOCK_FILE).write_text(f"999999999 {socket.gethostname()} 0\n")
    with FolderLock(run) as lock:
        assert (run / LOCK_FILE).read_text().split()[0] == str(os.getpid())
        assert lock.path == run / LOCK_FILE


class _Trap:
    """Unpickling it creates a file: the proof that a load ran code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_no_checkpoint_runs_code_whatever_the_environment(tmp_path, monkeypatch, trained):
    data, run = trained
    marker = tmp_path / "pwned"
    crafted = {"state_dict": {}, "epoch": 0, "trap": _Trap(marker)}
    hpc = tmp_path / "run" / "hpc_ckpt_1.ckpt"
    hpc.parent.mkdir()
    torch.save(crafted, hpc, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(TomosegError, match=r"cannot resume: checkpoint .*hpc_ckpt_1\.ckpt"):
        RunCheckpointIO().load_checkpoint(hpc, weights_only=None)
    with pytest.raises(TomosegError, match="cannot resume"):
        RunCheckpointIO().load_checkpoint(hpc, weights_only=False)
    assert not marker.exists()
    # the way Lightning reaches it: a Slurm job whose run folder holds a requeue checkpoint
    for k, v in {
        "SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "7",
        "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
    }.items():  # fmt: skip
        monkeypatch.setenv(k, v)
    cfg = load_config(None, {**TINY_TRAIN, "precision": "32", "tune_decision": False})
    with pytest.raises(TomosegError, match=r"hpc_ckpt_1\.ckpt is damaged or holds more"):
        train(data, hpc.parent, cfg)
    assert not marker.exists()
    # the good ones load
    ck = RunCheckpointIO().load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert ck["epoch"] == 0


def test_checkpoints_name_their_files_relative_to_the_run(trained):
    _, run = trained
    ck = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    states = [v for k, v in ck["callbacks"].items() if k.startswith("ModelCheckpoint")]
    assert len(states) == 2
    for state in states:
        assert state["dirpath"] == "."
        for key in ("best_model_path", "last_model_path", *state["best_k_models"]):
            value = state.get(key, key)
            assert "/" not in value and str(run) not in value, (key, value)
    best = next(s for s in states if s["monitor"])
    assert best["best_model_path"] == "best-epoch=0.ckpt"
