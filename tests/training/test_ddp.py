"""Training on several processes (Lightning DDP, gloo on CPU): samplers, one run folder, metrics
over all validation images, kill and resume, the Python API, device checks, Slurm requeue."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY_TRAIN, make_dataset, wait_for
from safetensors.torch import load_file

from tomoseg.config.schema import load_config
from tomoseg.data.datamodule import EpochSampler, RankSplit
from tomoseg.errors import TomosegError
from tomoseg.training.trainer import train

SRC = Path(__file__).resolve().parents[2] / "src"
TINY = {**TINY_TRAIN, "epochs": 2, "lr": 0.01}
RUN_FILES = {
    "decision.json",
    "config.yaml",
    "run.json",
    "metrics.csv",
    "curves.png",
    "best.safetensors",
    "last.safetensors",
    "checkpoints",
}
TIMINGS = ("seconds", "train_seconds", "crops_per_second")


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    for k in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "SLURM_NTASKS", "SLURM_RESTART_COUNT"):
        env.pop(k, None)
    return env


def _cli(tmp: Path, data: Path, run: Path, cfg: dict, *extra: str) -> list[str]:
    cfg_file = tmp / f"{run.name}.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    return [
        sys.executable,
        "-m",
        "tomoseg.cli",
        "train",
        "--data",
        str(data),
        "--out",
        str(run),
        "--config",
        str(cfg_file),
        "--devices",
        "2",
        "--strategy",
        "ddp",
        "--device",
        "cpu",
        "--quiet",
        *extra,
    ]


def _run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _rows(run: Path) -> list[dict]:
    return list(csv.DictReader((run / "metrics.csv").open()))


def _steps(run: Path) -> int:
    """Optimiser steps of a run: with 2 processes, half those of one."""
    return int(torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"])


def _single_process_validation(data: Path, run: Path) -> dict:
    """The validation metrics of ``last.safetensors`` computed by one process on all images."""
    from tomoseg.data.datamodule import SegDataModule
    from tomoseg.training.module import SegModule
    from tomoseg.training.trainer import make_trainer

    meta = json.loads((run / "run.json").read_text())
    cfg = load_config(run / "config.yaml", {"devices": 1, "strategy": "auto"})
    module = SegModule(
        cfg.model_dump(mode="json"),
        meta["classes"],
        meta["class_of_interest"],
        meta["class_weights"],
    )
    module.net.load_state_dict(load_file(run / "last.safetensors"))
    module.bf16 = meta["precision"] == "bf16-mixed"
    dm = SegDataModule(data, cfg)
    trainer = make_trainer(torch.device("cpu"), meta["precision"], enable_progress_bar=False)
    trainer.validate(module, datamodule=dm, verbose=False)
    assert module.val_result is not None
    return module.val_result


# ----------------------------------------------------------------------------- samplers


def test_epoch_sampler_splits_an_epoch_over_ranks():
    n, seed = 10, 3
    one = EpochSampler(n, seed)
    for world in (1, 2, 3, 4):
        ranks = [EpochSampler(n, seed, r, world) for r in range(world)]
        for epoch in (0, 5):
            one.set_epoch(epoch)
            for s in ranks:
                s.set_epoch(epoch)
            parts = [list(s) for s in ranks]
            assert {len(p) for p in parts} == {-(-n // world)}  # equal counts, padded
            assert all(len(p) == len(s) for p, s in zip(parts, ranks, strict=True))
            union = [i for p in parts for i in p]
            # every crop of the single-process epoch, with the same epoch tag (so the same
            # augmentation seed); the padding repeats a few of them
            assert set(union) == set(one)
            assert len(union) - n == -(-n // world) * world - n
            if world == 1:
                assert parts[0] == list(one)
    # ranks draw different crops
    a, b = (list(EpochSampler(n, seed, r, 2)) for r in (0, 1))
    assert not set(a) & set(b)
    with pytest.raises(ValueError):
        EpochSampler(n, seed, 2, 2)


def test_rank_split_covers_every_validation_image_once():
    for n in (1, 2, 3, 5, 8):
        for world in (1, 2, 3):
            parts = [list(RankSplit(n, r, world)) for r in range(world)]
            assert {len(p) for p in parts} == {-(-n // world)}  # same number of steps
            real = sorted(i for p in parts for i in p if i >= 0)
            assert real == list(range(n)), (n, world)  # none twice, none left out
    from tomoseg.data.datamodule import FullImageDataset

    ds = FullImageDataset([np.zeros((4, 4), np.float32)], [np.zeros((4, 4), np.int16)], ["a"])
    assert ds[-1] is None and ds[0][2] == 0  # the placeholder is not the last image


# ----------------------------------------------------------------------------- checks


def test_more_devices_than_there_are_is_one_line(tmp_path, run_cli):
    data = make_dataset(tmp_path / "d", shape=(48, 56))
    too_many = (os.cpu_count() or 1) + 1
    code, _, err = run_cli(
        "train", "--data", data, "--out", tmp_path / "r", "--device", "cpu",
        "--devices", too_many,
    )  # fmt: skip
    assert code == 1
    assert err.strip() == (
        f"error: --devices {too_many} is more than this machine has ({os.cpu_count()} CPU "
        f"cores); use --devices {os.cpu_count()} or fewer"
    )
    code, _, err = run_cli("train", "--data", data, "--out", tmp_path / "r", "--devices", "0")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "integer >= 1" in err
    with pytest.raises(TomosegError, match="num_nodes=2 needs a launcher"):
        train(data, tmp_path / "r", load_config(None, {**TINY, "num_nodes": 2, "device": "cpu"}))
    assert not (tmp_path / "r").exists()


def test_slurm_requeue_resumes_the_run_by_itself(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "d", shape=(48, 56))
    run = train(data, tmp_path / "run", load_config(None, {**TINY, "epochs": 1}))
    first = _rows(run)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    # the requeued job reruns its command: neither --overwrite nor the lack of --resume
    # discards the run it started
    train(data, run, load_config(None, {**TINY, "epochs": 2}), overwrite=True)
    rows = _rows(run)
    assert [r["epoch"] for r in rows] == ["1", "2"] and rows[0] == first[0]
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    with pytest.raises(TomosegError, match="holds a run with another lr"):
        train(data, run, load_config(None, {**TINY, "epochs": 2, "lr": 0.5}))


# ----------------------------------------------------------------------------- two processes


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_writes_one_run_validated_on_all_images(tmp_path):
    """``tomoseg train --devices 2 --strategy ddp`` on CPU (gloo): one run folder written by
    rank 0, loadable weights, and per-epoch validation metrics over all 3 validation images
    (2 on rank 0, 1 on rank 1): equal to one process evaluating the same weights."""
    data = make_dataset(tmp_path / "d", shape=(48, 56), n={"train": 3, "val": 3})
    run = tmp_path / "run"
    proc = _run_cli(_cli(tmp_path, data, run, TINY), cwd=tmp_path)
    assert proc.stdout.count("run written to") == 1  # rank 0 alone reports
    assert proc.stdout.count("epoch 2:") == 1
    assert {p.name for p in run.iterdir()} == RUN_FILES
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert len(ckpts) == 2 and ckpts[0].startswith("best-epoch=") and ckpts[1] == "last.ckpt"
    # nothing else written beside the run (no lightning_logs, no stray checkpoints)
    assert {p.name for p in tmp_path.iterdir()} == {"d", "run", "run.yaml"}
    rows = _rows(run)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert _steps(run) == 4  # 2 epochs x 2 batches of 4 per process (one process: 8 steps)
    # the epoch covered N crops over both processes (8 each)
    for r in rows:
        assert float(r["crops_per_second"]) * float(r["train_seconds"]) == pytest.approx(16)
    import tomoseg

    pred = tomoseg.Predictor.from_run(run, device="cpu", weights="last")
    assert pred is not None
    ref = _single_process_validation(data, run)
    assert int(ref["images"]) == 3
    last = rows[-1]
    assert float(last["val_loss"]) == pytest.approx(float(ref["loss"]), rel=1e-9)
    assert float(last["val_accuracy"]) == pytest.approx(float(ref["accuracy"]), rel=1e-9)
    for k, name in enumerate(("background", "fg")):
        want = float(ref["iou"][k])
        got = float(last[f"val_iou_{name}"])
        assert got == pytest.approx(want, rel=1e-9, nan_ok=True)
    assert float(last["val_pooled_iou_fg"]) == pytest.approx(float(ref["pooled_iou"][1]), rel=1e-9)


@pytest.mark.slow
def test_ddp_killed_midway_resumes_to_the_uninterrupted_result(tmp_path):
    """Both processes SIGKILLed (the launcher's process group, as when a node dies) after the
    first epoch; ``--resume`` with two processes started by ``torchrun`` finishes the run as an
    uninterrupted one."""
    data = make_dataset(tmp_path / "d", shape=(48, 56), n={"train": 3, "val": 3})
    cfg = {**TINY, "crops": 96, "epochs": 3}
    ref = tmp_path / "ref"
    _run_cli(_cli(tmp_path, data, ref, cfg), cwd=tmp_path)
    run = tmp_path / "killed"
    args = _cli(tmp_path, data, run, cfg)
    proc = subprocess.Popen(
        args,
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # the launcher and the process it starts: one group to kill
    )
    metrics = run / "metrics.csv"
    try:
        wait_for(
            lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= 2,
            "the first epoch's row in metrics.csv",
            proc=proc,
        )
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher and every rank
    proc.wait()
    before = _rows(run)
    assert 1 <= len(before) < 3
    # resumed under torchrun (an external launcher: both ranks start together, rank 0 alone
    # checks the run folder)
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        *args[1:],
        "--resume",
    ]
    _run_cli(torchrun, cwd=tmp_path)
    after = _rows(run)
    assert [r["epoch"] for r in after] == ["1", "2", "3"]
    assert after[: len(before) - 1] == before[: len(before) - 1]  # finished epochs kept

    def strip(rows):
        return [{k: v for k, v in r.items() if k not in TIMINGS} for r in rows]

    assert strip(after) == strip(_rows(ref))
    a, b = load_file(ref / "last.safetensors"), load_file(run / "last.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_api_trains_on_two_processes_without_rerunning_the_script(tmp_path):
    """``tomoseg.train(..., devices=2, strategy="ddp")`` from a script: ddp_spawn starts the
    two processes; what the script does after training runs once."""
    data = make_dataset(tmp_path / "d", shape=(48, 56), n={"train": 3, "val": 3})
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import tomoseg

            if __name__ == "__main__":
                run = tomoseg.train({str(data)!r}, "run", device="cpu", devices=2,
                                    strategy="ddp", **{TINY!r})
                with open("after.txt", "a") as f:
                    f.write(f"{{len(run.metrics)}}\\n")
            """
        )
    )
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "after.txt").read_text() == "2\n"  # the script went on once
    run = tmp_path / "run"
    assert _steps(run) == 4  # two processes
    assert {p.name for p in run.iterdir()} == RUN_FILES
    assert {p.name for p in tmp_path.iterdir()} == {"d", "run", "script.py", "after.txt"}
    ref = _single_process_validation(data, run)
    assert float(_rows(run)[-1]["val_loss"]) == pytest.approx(float(ref["loss"]), rel=1e-9)
