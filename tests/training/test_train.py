"""Training: class weights, per-epoch sampling, run folder, resume after kill -9, bad inputs."""

import csv
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_TRAIN, make_dataset, sigkill_when
from safetensors.torch import load_file

from tomoseg.config.schema import load_config
from tomoseg.data.datamodule import CropDataset, EpochSampler
from tomoseg.data.statistics import class_weights
from tomoseg.errors import TomosegError
from tomoseg.training.trainer import train

TINY = {**TINY_TRAIN, "epochs": 2}


def tiny_cfg(**kw):
    return load_config(None, {**TINY, **kw})


def test_class_weights():
    c = np.array([900, 100])
    w = class_weights(c, "inverse")
    assert w[1] / w[0] == pytest.approx(9) and w.mean() == pytest.approx(1)
    w3 = class_weights(np.array([700, 200, 100]), "median")
    assert w3 / w3[1] == pytest.approx([200 / 700, 1, 2])
    assert (class_weights(c, "none") == 1).all()
    with pytest.raises(TomosegError, match="'fg' has no pixel"):
        class_weights(np.array([10, 0]), "inverse", ["bg", "fg"])
    with pytest.raises(TomosegError, match="class 'fg' has no pixel") as exc:
        class_weights(np.array([10, 0]), "none", ["bg", "fg"])  # whatever the weighting
    assert "weight" not in str(exc.value)


def test_epoch_sampler_and_fresh_augmentation():
    s = EpochSampler(10, seed=3)
    e0 = list(s)
    s.set_epoch(1)
    e1 = list(s)
    assert sorted(e0) == list(range(10)) and sorted(e1) == list(range(10, 20))
    assert [i % 10 for i in e0] != [i % 10 for i in e1]
    s.set_epoch(0)
    assert list(s) == e0
    from tomoseg.data.crops import CropBox

    rng = np.random.default_rng(0)
    img = rng.random((40, 40)).astype(np.float32)
    ds = CropDataset([img], [(img > 0.5).astype(np.uint8)], [CropBox(0, 0, 0, 32, 32)], tiny_cfg())
    draws = [ds[e * 1][0] for e in range(12)]  # the same crop in epochs 0..11
    assert torch.equal(ds[0][0], draws[0])  # deterministic
    assert len({d.numpy().tobytes() for d in draws}) > 3  # a fresh draw most epochs
    x, y = ds[5]
    assert torch.equal((x[0] > 0.5).long(), y)  # mask moved exactly like the image


def test_train_writes_complete_run(tmp_path):
    data = make_dataset(tmp_path / "d", shape=(48, 56))
    run = train(data, tmp_path / "run", tiny_cfg())
    assert not torch.are_deterministic_algorithms_enabled()  # no lasting global side effect
    for f in (
        "config.yaml",
        "run.json",
        "metrics.csv",
        "curves.png",
        "best.safetensors",
        "last.safetensors",
    ):
        assert (run / f).is_file(), f
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for col in (
        "train_loss",
        "val_loss",
        "train_accuracy",
        "val_accuracy",
        "train_iou_fg",
        "val_iou_fg",
        "val_bf1_fg",
        "seconds",
    ):
        assert rows[0][col] != "", col
    meta = json.loads((run / "run.json").read_text())
    assert meta["class_weights"] == [1.0, 1.0]  # the default: Dice + unweighted CE
    assert set(meta["normalization"]) >= {"lower", "upper"}
    # checkpoints load without executing pickled code
    ck = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ck["epoch"] == 1 and len(ck["tomoseg_history"]) == 2
    state = load_file(run / "last.safetensors")
    assert any(k.endswith("weight") for k in state)
    with pytest.raises(TomosegError, match="already holds a run"):
        train(data, run, tiny_cfg())
    with pytest.raises(
        TomosegError, match=r"holds a run with another lr \(0\.\d+ there, 0\.\d+ now\)"
    ):
        train(data, run, tiny_cfg(lr=0.1), resume=True)


def _weights(run: Path) -> dict:
    return load_file(run / "last.safetensors")


def _metrics_without_timing(run: Path) -> list[dict]:
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    return [
        {k: v for k, v in r.items() if k not in ("seconds", "train_seconds", "crops_per_second")}
        for r in rows
    ]


@pytest.mark.slow  # 15-20 s; the default suite resumes train after a cancel (below)
@pytest.mark.parametrize("ema", [None, 0.9], ids=["plain", "ema"])
def test_resume_after_kill_equals_uninterrupted(tmp_path, ema):
    data = make_dataset(tmp_path / "d", shape=(48, 56))
    kw = {**TINY, "crops": 160, "epochs": 4, "ema_decay": ema}
    ref = train(data, tmp_path / "ref", load_config(None, kw))
    run = tmp_path / "killed"
    args = [
        sys.executable,
        "-m",
        "tomoseg.cli",
        "train",
        "--data",
        str(data),
        "--out",
        str(run),
        "--quiet",
    ]
    cfg_file = tmp_path / "cfg.yaml"
    import yaml

    cfg_file.write_text(yaml.safe_dump(kw))
    proc = subprocess.Popen(
        [*args, "--config", str(cfg_file)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    metrics = run / "metrics.csv"
    sigkill_when(
        proc,
        lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= 3,
        "two finished epochs in metrics.csv",
    )
    before = list(csv.DictReader(metrics.open()))
    done = len(before)
    assert 2 <= done < 4
    train(data, run, load_config(cfg_file), resume=True)
    after = list(csv.DictReader((run / "metrics.csv").open()))
    # finished epochs were not recomputed: their rows (timings included) are kept as they were
    assert after[: done - 1] == before[: done - 1]
    a, b = _weights(ref), _weights(run)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert _metrics_without_timing(ref) == _metrics_without_timing(run)


class _CancelInSecondEpoch:
    """A cancel token set a few batches into the second epoch: armed by the progress callback
    when the first epoch is reported, then set at its sixth check (an event, not a timer)."""

    def __init__(self):
        self.armed, self.checks = False, 0

    def is_set(self) -> bool:
        if self.armed:
            self.checks += 1
        return self.checks > 5


def test_cancel_midway_then_resume_equals_uninterrupted(tmp_path):
    from tomoseg.utils.progress import Cancelled

    data = make_dataset(tmp_path / "d", shape=(48, 56))
    cfg = load_config(None, {**TINY, "crops": 160, "epochs": 4})  # 40 batches per epoch
    ref = train(data, tmp_path / "ref", cfg)
    run = tmp_path / "cancelled"
    token, events = _CancelInSecondEpoch(), []

    def on_event(event):
        events.append(event)
        if event.kind == "advance" and event.done == 1:
            token.armed = True

    with pytest.raises(Cancelled, match=r"train cancelled after 1/4 epochs"):
        train(data, run, cfg, progress=on_event, cancel=token)
    assert token.checks == 6  # stopped at the batch after the token was set
    advances = [e for e in events if e.kind == "advance"]
    assert [(e.unit, e.done, e.total) for e in advances] == [("epoch", 1, 4)]
    assert advances[0].metrics["epoch"] == 1 and advances[0].message.startswith("epoch 1: loss")
    assert any(e.kind == "message" and e.message.startswith("class weights") for e in events)
    # the unfinished epoch left nothing: one row, the first epoch's checkpoint
    assert [r["epoch"] for r in csv.DictReader((run / "metrics.csv").open())] == ["1"]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0
    # an event set when an epoch is reported stops right after it, its checkpoint written
    stop, seen = threading.Event(), []

    def stop_after_third(event):
        seen.append(event)
        if event.kind == "advance" and event.done == 3:
            stop.set()

    with pytest.raises(Cancelled, match=r"after 3/4 epochs"):
        train(data, run, cfg, resume=True, progress=stop_after_third, cancel=stop)
    assert [e.done for e in seen if e.kind in ("start", "advance")] == [1, 2, 3]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 2
    done = []
    train(data, run, cfg, resume=True, progress=done.append)
    assert [e.done for e in done if e.kind in ("start", "advance")] == [3, 4]
    assert done[-1].kind == "end"
    a, b = _weights(ref), _weights(run)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert _metrics_without_timing(ref) == _metrics_without_timing(run)


def test_bad_training_inputs(tmp_path, run_cli):
    data = make_dataset(tmp_path / "d", shape=(48, 56))

    def err(*args):
        code, _, e = run_cli("train", "--data", data, "--out", tmp_path / "r", *args)
        lines = e.strip().splitlines()
        assert code != 0 and len(lines) == 1 and lines[0].startswith("error:"), e
        return lines[0]

    assert "crop size" in err("--crop-size", "8")
    assert "crops" in err("--crops", "0")
    assert "model" in err("--model", "resnet")
    bad_cfg = tmp_path / "bad.yaml"
    bad_cfg.write_text("learning_rate: 0.1\n")
    assert "learning_rate" in err("--config", bad_cfg)
    bad_cfg.write_text("epochs: many\n")
    assert "epochs" in err("--config", bad_cfg)
    if not torch.cuda.is_available():
        assert "no CUDA GPU" in err("--device", "gpu")
    assert "--val-fraction" in err("--val-fraction", "1.5")
    assert "--val-fraction" in err("--val-fraction", "0")
    one = make_dataset(tmp_path / "one", shape=(48, 56), n={"train": 2})
    assert "leaves no training image" in err("--data", one, "--val-fraction", "0.9")
    assert "not both" in err(
        "--images", data / "train" / "images", "--masks", data / "train" / "masks"
    )
    empty_fg = make_dataset(tmp_path / "bg", shape=(48, 56), classes=("background", "fg", "never"))
    # class 'never' occurs in the generator; make a dataset whose last class never appears
    (empty_fg / "dataset.json").write_text(
        json.dumps({"classes": ["background", "fg", "y", "never"]})
    )
    code, _, e = run_cli("train", "--data", empty_fg, "--out", tmp_path / "r3", "--crop-size", "32")
    assert code != 0 and "has no pixel" in e


def test_untiled_memory_check():
    from tomoseg.inference.sliding_window import check_untiled_memory

    check_untiled_memory((100, 100), 16, 2, available=1 << 30)
    with pytest.raises(TomosegError, match="without tiling"):
        check_untiled_memory((20000, 20000), 16, 2, available=8 << 30)


def test_bad_checkpoints(tmp_path):
    from safetensors.torch import save_file

    from tomoseg.models.registry import build_model
    from tomoseg.runtime.checkpoint import load_run

    data = make_dataset(tmp_path / "d", shape=(48, 56))
    run = train(data, tmp_path / "run", tiny_cfg(epochs=1))
    assert load_run(run).classes == ["background", "fg"]
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes((run / "best.safetensors").read_bytes()[:200])
    with pytest.raises(TomosegError, match="corrupted checkpoint"):
        load_run(bad)
    # weights of another architecture under this run's metadata
    from safetensors import safe_open

    with safe_open(str(run / "best.safetensors"), framework="pt") as f:
        meta = f.metadata()
    other = build_model("unet", 1, 2, 8, 3).state_dict()
    save_file(
        {k: v.contiguous() for k, v in other.items()},
        str(tmp_path / "other.safetensors"),
        metadata=meta,
    )
    with pytest.raises(TomosegError, match="does not fit"):
        load_run(tmp_path / "other.safetensors")
    save_file({k: v.contiguous() for k, v in other.items()}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(TomosegError, match="not a tomoseg checkpoint"):
        load_run(tmp_path / "plain.safetensors")
    with pytest.raises(TomosegError, match="no trained weights"):
        load_run(tmp_path)


def test_validation_metrics_reduce_over_two_ranks_like_one_process():
    """Validation images split over two (simulated) processes: summing the metric states, as
    DDP's reduction does, gives exactly the single-process numbers (and ScoreSummary's)."""
    from tomoseg.metrics.segmentation import ScoreSummary, score_image
    from tomoseg.training.epoch_metrics import TrainScores, ValidationScores

    rng = np.random.default_rng(3)
    scores, losses = [], []
    for i in range(5):
        truth = (rng.random((24, 30)) < 0.3).astype(np.int16)
        truth[:, :4] = -1  # unannotated band
        pred = np.where(rng.random((24, 30)) < 0.8, np.clip(truth, 0, 1), 1 - np.clip(truth, 0, 1))
        if i == 2:
            truth[truth == 1] = 0  # a class absent from one image: NaN IoU/BF1 left out
        scores.append(score_image(truth, pred.astype(np.uint8), 2, 2.0, str(i), ignore_label=-1))
        losses.append(float(rng.random()))
    one = ValidationScores(2)
    for s, loss in zip(scores, losses, strict=True):
        one.update(s, loss)
    ranks = [ValidationScores(2), ValidationScores(2)]
    for j, (s, loss) in enumerate(zip(scores, losses, strict=True)):
        ranks[j % 2].update(s, loss)  # DistributedSampler-style interleaving
    ranks[0].merge_state(ranks[1])  # the "sum" reduction of every state
    a, b = one.compute(), ranks[0].compute()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(torch.isnan(a[k]), torch.isnan(b[k])), k
        assert torch.allclose(a[k].double(), b[k].double(), rtol=1e-14, atol=0, equal_nan=True), k
    assert torch.equal(a["cm"], b["cm"])
    ref = ScoreSummary(["bg", "fg"], "fg", 2.0, scores)
    assert np.allclose(a["iou"].numpy(), ref.mean_iou, rtol=1e-14, equal_nan=True)
    assert np.allclose(a["bf1"].numpy(), ref.mean_bf1, rtol=1e-14, equal_nan=True)
    assert float(a["accuracy"]) == pytest.approx(ref.mean_accuracy, rel=1e-14)
    assert np.array_equal(a["cm"].numpy(), ref.pooled_cm)
    # training states likewise (the ignore index is left out of the confusion matrix)
    y = torch.from_numpy(rng.integers(-1, 2, (4, 8, 8)))
    p = torch.from_numpy(rng.integers(0, 2, (4, 8, 8)))
    t1, t2a, t2b = TrainScores(2), TrainScores(2), TrainScores(2)
    t1.update(y, p, 0.5)
    t2a.update(y[:2], p[:2], 0.5)
    t2b.update(y[2:], p[2:], 0.5)
    t2a.merge_state(t2b)
    for k, v in t1.compute().items():
        assert torch.equal(v, t2a.compute()[k]), k
    assert int(t1.compute()["cm"].sum()) == int((y >= 0).sum())


def test_resume_refuses_a_damaged_checkpoint_in_one_line(tmp_path, run_cli):
    data = make_dataset(tmp_path / "d", shape=(48, 56))
    run = tmp_path / "run"
    kw = [
        f"--{k.replace('_', '-')}={v}"
        for k, v in TINY.items()
        if k not in ("width", "depth", "tile_size")
    ]
    cfg_file = tmp_path / "c.yaml"
    import yaml

    cfg_file.write_text(yaml.safe_dump({**TINY, "epochs": 1}))
    code, _, e = run_cli("train", "--data", data, "--out", run, "--config", cfg_file, "--quiet")
    assert code == 0, e
    ckpt = run / "checkpoints" / "last.ckpt"
    good = ckpt.read_bytes()
    for bad in (good[: len(good) // 2], b"not a checkpoint at all"):
        ckpt.write_bytes(bad)
        code, _, e = run_cli(
            "train", "--data", data, "--out", run, "--config", cfg_file, "--resume", "--quiet"
        )
        lines = e.strip().splitlines()
        assert code == 1 and len(lines) == 1 and lines[0].startswith("error:"), e
        assert str(ckpt) in lines[0] and "--overwrite" in lines[0]
    # tampered: a valid file holding another network's weights
    ck = torch.load(__import__("io").BytesIO(good), weights_only=True)
    ck["state_dict"] = {k: v[..., :1] if v.ndim else v for k, v in ck["state_dict"].items()}
    torch.save(ck, ckpt)
    code, _, e = run_cli("train", "--data", data, "--out", run, "--config", cfg_file, "--resume")
    lines = e.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "does not hold this run's network" in lines[0], e
    del kw


def test_curves_failure_only_warns(tmp_path, monkeypatch):
    import tomoseg.training.recording as rec

    def boom(*a, **k):
        raise RuntimeError("no display")

    monkeypatch.setattr(rec, "plot_curves", boom)
    data = make_dataset(tmp_path / "d", shape=(48, 56))
    with pytest.warns(RuntimeWarning, match="curves.png not drawn"):
        run = train(data, tmp_path / "run", tiny_cfg(epochs=1))
    assert (run / "best.safetensors").is_file() and (run / "metrics.csv").is_file()


def test_resume_reexports_weights_missing_after_a_kill(tmp_path):
    """A kill between a checkpoint and its safetensors export: resuming writes them again."""
    data = make_dataset(tmp_path / "d", shape=(48, 56))
    run = train(data, tmp_path / "run", tiny_cfg(epochs=1))
    last = load_file(run / "last.safetensors")
    best_ckpt = list((run / "checkpoints").glob("best-epoch=*.ckpt"))
    assert len(best_ckpt) == 1
    (run / "last.safetensors").unlink()
    (run / "best.safetensors").unlink()
    train(data, run, tiny_cfg(epochs=1), resume=True)
    again = load_file(run / "last.safetensors")
    assert all(torch.equal(last[k], again[k]) for k in last)
    from tomoseg.runtime.checkpoint import load_run

    assert load_run(run, "best").meta["checkpoint"] == best_ckpt[0].name


def test_sweep_accepts_a_dataset_without_val_split(tmp_path):
    from tomoseg.experiments.sweep import prepare_sweep

    data = make_dataset(tmp_path / "d", shape=(48, 56), n={"train": 3, "test": 1})
    cfg_file = prepare_sweep(tmp_path / "sw", data, tiny_cfg(val_fraction=0.34), [32], [8], 1)
    assert "val_fraction: 0.34" in cfg_file.read_text()
