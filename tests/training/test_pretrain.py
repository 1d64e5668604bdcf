"""Self-supervised pretraining (``tomoseg pretrain``): it writes a folder that ``train --init``
starts from (encoder and decoder weights equal at the start, a new head, the pretraining's
normalisation); another network, too few pixels and an occupied output are one error line; a
cancelled pretraining resumes to the uninterrupted result."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from conftest import TINY_TRAIN, make_dataset
from safetensors.torch import load_file

import tomoseg
from tomoseg.errors import TomosegError
from tomoseg.training.pretrained import head_keys
from tomoseg.utils.progress import Cancelled

pytestmark = pytest.mark.usefixtures("one_thread")

#: the smallest pretraining: the network of TINY_TRAIN (width 4, depth 3), 32 px crops
TINY_PRE = {"width": 4, "depth": 3, "crop_size": 32, "crops": 8, "batch_size": 4, "epochs": 1}
BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def slices(folder: Path, n: int = 8, shape=(48, 56), seed: int = 0) -> Path:
    """A folder of ``n`` unlabelled uint8 TIFF slices."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = rng.integers(0, 40, shape) + 80 * (rng.random(shape) > 0.8)
        tifffile.imwrite(folder / f"z{i:03d}.tif", img.astype(np.uint8))
    return folder


@pytest.fixture(scope="module")
def pre(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pre")
    return tomoseg.pretrain(slices(root / "slices"), root / "pre", **TINY_PRE).path


def test_pretrain_writes_a_run_without_classes(pre):
    rec = json.loads((pre / "run.json").read_text())
    assert rec["pretrained"] is True and rec["complete"] is True and rec["epochs_done"] == 1
    assert rec["model"]["in_channels"] == 1 and "classes" not in rec
    assert rec["data"]["slices"] == 8 and rec["objective"]["mask_patch"] == 4  # the stride
    assert (pre / "checkpoints" / "last.ckpt").is_file()
    assert (pre / "last.safetensors").is_file() and (pre / "metrics.csv").is_file()
    # the base configuration of train(init=pre): the network only
    assert (pre / "config.yaml").read_text().split() == [
        "model:", "unet", "width:", "4", "depth:", "3", "context:", "0",
    ]  # fmt: skip
    with pytest.raises(TomosegError, match="pretrained weights without classes"):
        tomoseg.Predictor.from_run(pre)


def test_train_init_starts_from_the_pretrained_weights(pre, tmp_path):
    data = make_dataset(tmp_path / "data")
    # a learning rate so small that one epoch leaves the weights where they started
    opts = {**TINY_TRAIN, "lr": 1e-12, "tune_decision": False}
    run = tomoseg.train(data, tmp_path / "run", init=pre, **opts)
    rec = json.loads((run.path / "run.json").read_text())
    old = json.loads((pre / "run.json").read_text())
    assert rec["parent"]["pretrained"] is True and rec["parent"]["run"] == str(pre.resolve())
    assert rec["normalization"] == old["normalization"] and rec["classes"] == ["background", "fg"]
    a, b = load_file(pre / "last.safetensors"), load_file(run.path / "last.safetensors")
    head = head_keys(old["model"])
    assert head and head < set(a)  # the output convolution, found without naming the network
    kept = [k for k in a if k not in head and not k.endswith(BUFFERS)]
    assert len(kept) > 10
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in kept)
    assert not all(torch.allclose(a[k], b[k]) for k in head)  # the head is new


def test_init_refuses_another_network_in_one_line(pre, tmp_path, run_cli):
    from conftest import one_error

    data = make_dataset(tmp_path / "data")
    spec = json.loads((data / "dataset.json").read_text())
    (data / "dataset.json").write_text(json.dumps({**spec, "consecutive": True}))
    base = ["train", "--init", pre, "--data", data, "--epochs", "1", "--crops", "8"]
    line = one_error(run_cli, *base, "--out", tmp_path / "a", "--width", "8")
    assert "--init" in line and "pretrained network (unet width 4" in line and "width 8" in line
    line = one_error(run_cli, *base, "--out", tmp_path / "b", "--context", "1")
    assert "1 input channel)" in line and "3 input channels" in line
    assert not (tmp_path / "a" / "last.safetensors").exists()


def test_too_few_pixels_and_an_occupied_output_are_one_line(pre, tmp_path, run_cli):
    from conftest import one_error

    few = slices(tmp_path / "few", n=2, shape=(64, 64))
    line = one_error(run_cli, "pretrain", "--images", few, "--out", tmp_path / "p", "--crop-size", "64")  # fmt: skip
    assert (
        "holds 8192 pixels" in line and "needs at least 65536" in line and "--crop-size 64" in line
    )
    assert not (tmp_path / "p").exists()
    # refused input with --overwrite: the earlier results stay
    one_error(run_cli, "pretrain", "--images", few, "--out", pre, "--crop-size", "64", "--overwrite")  # fmt: skip
    assert (pre / "last.safetensors").is_file() and (pre / "run.json").is_file()
    line = one_error(run_cli, "pretrain", "--images", few, "--out", pre, "--crop-size", "32")
    assert "already holds" in line and "--overwrite" in line and "--resume" in line


def test_resume_after_a_cancel_equals_the_uninterrupted_pretraining(tmp_path):
    folder = slices(tmp_path / "slices")
    opts = {**TINY_PRE, "epochs": 2}
    whole = tomoseg.pretrain(folder, tmp_path / "whole", **opts).path
    cancel = threading.Event()

    def stop_after_first_epoch(event) -> None:
        if event.kind == "advance":
            cancel.set()

    out = tmp_path / "cut"
    with pytest.raises(Cancelled):
        tomoseg.pretrain(folder, out, progress=stop_after_first_epoch, cancel=cancel, **opts)
    assert json.loads((out / "run.json").read_text())["epochs_done"] == 1
    tomoseg.pretrain(None, out, resume=True)  # the recorded stack and settings
    a, b = load_file(whole / "last.safetensors"), load_file(out / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [r.split(",")[:3] for r in (out / "metrics.csv").read_text().splitlines()]
    assert rows == [r.split(",")[:3] for r in (whole / "metrics.csv").read_text().splitlines()]


def test_a_mask_patch_not_smaller_than_the_crops_is_one_line(tmp_path, run_cli):
    from conftest import one_error

    few = slices(tmp_path / "s", n=2, shape=(48, 48))
    args = ["pretrain", "--images", few, "--out", tmp_path / "p", "--crop-size", "32"]
    line = one_error(run_cli, *args, "--mask-patch", "48", warnings=False)
    assert line.startswith("error: --mask-patch 48 is not smaller than --crop-size 32"), line
    assert not (tmp_path / "p").exists()
    # 0: the network's stride (2**6 = 64 px at depth 7), the same rule, in the library too
    with pytest.raises(TomosegError, match=r"mask_patch=0 \(the network's stride, 64 px\)"):
        tomoseg.pretrain(few, tmp_path / "p", crop_size=32, width=4, depth=7)
    assert not (tmp_path / "p").exists()


def test_label_images_given_as_images_are_one_warning(recwarn):
    from tomoseg.config.pretrain import pretrain_config
    from tomoseg.errors import TomosegWarning
    from tomoseg.io.sources import open_source
    from tomoseg.training.pretrain import read_unlabelled

    cfg = pretrain_config(crop_size=32)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (8, 48, 48)).astype(np.uint16)  # a class-id stack
    with pytest.warns(TomosegWarning, match=r"look like label images \(3 distinct values"):
        read_unlabelled(open_source(labels), cfg)
    recwarn.clear()
    gray = rng.integers(0, 40, (8, 48, 48)).astype(np.uint8)  # 40 grey values
    read_unlabelled(open_source(gray), cfg)
    read_unlabelled(open_source(labels.astype(np.float32)), cfg)  # float: measured intensities
    assert not [w for w in recwarn if issubclass(w.category, TomosegWarning)]


@pytest.mark.slow
def test_pretrain_on_two_cpu_processes_writes_one_pretraining_train_init_takes(tmp_path):
    """``tomoseg pretrain --devices 2 --strategy ddp`` on CPU (gloo), as ``train`` runs DDP:
    rank 0 alone writes the folder, an epoch's crops are split over the processes (half the
    optimizer steps of one process), and ``train --init`` starts from the result."""
    import os
    import subprocess
    import sys

    src = Path(__file__).resolve().parents[2] / "src"
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="1")
    for k in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "SLURM_NTASKS", "SLURM_RESTART_COUNT"):
        env.pop(k, None)
    folder = slices(tmp_path / "slices")
    out = tmp_path / "pre"
    opts = ["--width", "4", "--depth", "3", "--crop-size", "32", "--crops", "16"]
    args = [sys.executable, "-m", "tomoseg.cli", "pretrain", "--images", str(folder)]
    args += ["--out", str(out), *opts, "--batch-size", "4", "--epochs", "2"]
    args += ["--devices", "2", "--strategy", "ddp", "--device", "cpu", "--quiet"]
    proc = subprocess.run(
        args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads((out / "run.json").read_text())
    assert rec["complete"] is True and rec["epochs_done"] == 2
    assert rec["config"]["devices"] == 2 and rec["config"]["strategy"] == "ddp"
    rows = (out / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2"]
    step = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert step == 4  # 2 epochs x 16 crops / (2 processes x 4 per batch); one process: 8
    # nothing else written beside it (no lightning_logs)
    assert {p.name for p in tmp_path.iterdir()} == {"slices", "pre"}
    data = make_dataset(tmp_path / "data")
    run = tomoseg.train(data, tmp_path / "run", init=out, **{**TINY_TRAIN, "tune_decision": False})
    assert json.loads((run.path / "run.json").read_text())["parent"]["pretrained"] is True
