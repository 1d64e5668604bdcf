"""Weight averaging with a warm-up (training/averaging.py): the average follows the raw weights
early, validation scores both while the average warms up, the curves show both."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from conftest import TINY_TRAIN, make_dataset
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from tomoseg.config.schema import load_config
from tomoseg.training.averaging import (
    WarmupEMA,
    warmup_decay,
    warmup_ema_multi_avg_fn,
    warmup_updates,
)
from tomoseg.training.budget import Probe, plan_epochs
from tomoseg.training.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")


@torch.no_grad()
def _distance(a: nn.Module, b: nn.Module) -> float:
    pairs = zip(a.parameters(), b.parameters(), strict=True)
    return float(sum((p - q).pow(2).sum() for p, q in pairs) ** 0.5)


def _average_after_steps(multi_avg_fn, steps: int = 20) -> tuple[float, float]:
    """Train a small network ``steps`` SGD steps, averaging after each; return the distance of
    the average to the raw weights and the distance the raw weights moved from their start."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 1))
    start = AveragedModel(net)  # a copy of the initial weights
    avg = AveragedModel(net, multi_avg_fn=multi_avg_fn, use_buffers=True)
    opt = torch.optim.SGD(net.parameters(), lr=0.2)
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.mse_loss(net(x), y).backward()
        opt.step()
        avg.update_parameters(net)
    return _distance(avg.module, net), _distance(start.module, net)


def test_warmup_average_tracks_the_raw_weights_after_the_first_steps():
    """With the warm-up the average stays close to the raw weights early in training; a fixed
    decay of 0.99 (Lightning's EMAWeightAveraging) still holds mostly the first weights."""
    lag, moved = _average_after_steps(warmup_ema_multi_avg_fn(0.99))
    assert moved > 0.1 and lag < 0.35 * moved, (lag, moved)
    fixed_lag, _ = _average_after_steps(get_ema_multi_avg_fn(0.99))
    assert fixed_lag > 0.7 * moved, (fixed_lag, moved)


def test_warmup_decay_follows_the_published_rule():
    assert warmup_decay(0.99, 1) == pytest.approx(2 / 11)
    assert warmup_decay(0.99, 100) == pytest.approx(101 / 110)
    assert warmup_decay(0.99, 10**6) == 0.99
    n = warmup_updates(0.99)
    assert n == 890 and warmup_decay(0.99, n) == 0.99 and warmup_decay(0.99, n - 1) < 0.99
    assert warmup_updates(0.5) == 8 and warmup_decay(0.5, 8) == 0.5 > warmup_decay(0.5, 7)


def test_run_records_raw_and_averaged_validation_while_warming_up(tmp_path):
    """A run with weight averaging validates the raw weights beside the average while the
    average warms up (metrics.csv: val_raw_*, the decay in effect), and monitors the average."""
    data = make_dataset(tmp_path / "d", shape=(40, 48))
    kw = {**TINY_TRAIN, "precision": "32", "epochs": 3, "ema_decay": 0.5, "tune_decision": False}
    run = train(data, tmp_path / "run", load_config(None, kw))  # 4 steps per epoch
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    coi = json.loads((run / "run.json").read_text())["class_of_interest"]
    # 0.5 is reached after 8 updates: epochs 1 and 2 validate both, epoch 3 the average only
    assert [bool(r[f"val_raw_iou_{coi}"]) for r in rows] == [True, True, False]
    decays = [float(r["ema_decay"]) for r in rows]
    assert decays[0] == pytest.approx(warmup_decay(0.5, 3)) and decays[-1] == 0.5
    assert all(r[f"val_iou_{coi}"] for r in rows)
    ck = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert int(ck["averaging_state"]["n_averaged"]) == 12
    assert (run / "curves.png").stat().st_size > 0


def test_warmup_callback_reports_its_decay():
    cb = WarmupEMA(0.99)
    assert cb.updates() == 0 and cb.warming_up()
    fixed = WarmupEMA(0.99, warmup=False)
    assert not fixed.warming_up()


def test_time_budget_counts_the_raw_validations():
    probe = Probe(5, 0.5, 10, 4.0, 3, 10.0)
    plain = plan_epochs(10, probe)
    doubled = plan_epochs(10, probe, double_validation_epochs=30)
    assert doubled["epochs"] < plain["epochs"]


def test_residual_encoder_with_deep_supervision_trains_and_predicts(tmp_path, run_cli):
    """unet-resenc with deep supervision trains (auxiliary losses), records the heads in its
    hparams, and every command loads it (the heads unused at inference)."""
    from tomoseg.inference.predictor import Predictor

    data = make_dataset(tmp_path / "d", shape=(40, 48))
    kw = {**TINY_TRAIN, "precision": "32", "model": "unet-resenc", "deep_supervision": True}
    run = train(data, tmp_path / "run", load_config(None, {**kw, "tune_decision": False}))
    model = json.loads((run / "run.json").read_text())["model"]
    assert model["name"] == "unet-resenc" and model["deep_supervision"] is True
    image = torch.zeros(40, 48, dtype=torch.uint8).numpy()
    labels = Predictor.from_run(run, device="cpu").predict(image)
    assert labels.shape == (40, 48)
    code, _, err = run_cli(
        "train",
        "--data",
        data,
        "--out",
        tmp_path / "r",
        "--deep-supervision",
        "--model",
        "unet",
        "--crop-size",
        "32",
    )
    assert code != 0 and err.count("\n") == 1, err
    assert "--deep-supervision needs" in err and "--model unet has none" in err, err
