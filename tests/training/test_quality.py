"""Issue 13: TTA wired into every command, the tuned decision applied everywhere alike,
evaluate with and without it, EMA weights, the time-budget plan."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_TRAIN, make_dataset, write_png
from safetensors.torch import load_file

from tomoseg.config.schema import load_config
from tomoseg.data.normalization import normalize
from tomoseg.errors import TomosegError
from tomoseg.inference.predictor import Predictor
from tomoseg.inference.tta import _OPS, TRANSFORMS
from tomoseg.io.images import read_image, read_mask
from tomoseg.runtime.checkpoint import load_run
from tomoseg.runtime.logit_adjustment import decision_bias
from tomoseg.training.budget import Probe, plan_epochs, validations
from tomoseg.training.trainer import train

SHAPE = (40, 48)
TINY = {**TINY_TRAIN, "precision": "32"}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(one_thread, tmp_path_factory) -> tuple[Path, Path]:
    """A dataset and a run trained on it for one epoch (its decision tuned on validation)."""
    root = tmp_path_factory.mktemp("quality")
    data = make_dataset(root / "data", shape=SHAPE)
    run = train(data, root / "run", load_config(None, TINY))
    return data, run


def _big_offset(run: Path, tmp: Path) -> Path:
    """A copy of the run whose decision.json pushes every pixel to the class of interest."""
    import shutil

    copy = tmp / "forced"
    shutil.copytree(run, copy)
    rec = {"decision": {"class_id": 1, "offset": 1e4, "min_size": 0, "max_hole": 0}}
    (copy / "decision.json").write_text(json.dumps(rec))
    return copy


def test_training_tunes_and_records_the_decision(tiny):
    data, run = tiny
    rec = json.loads((run / "decision.json").read_text())
    assert set(rec["decision"]) == {"class_id", "offset", "min_size", "max_hole"}
    assert rec["epoch"] == 1 and rec["weights"] == "last" and rec["tta"] == ["identity"]
    assert rec["after"]["iou"] >= rec["before"]["iou"] or np.isnan(rec["before"]["iou"])
    assert json.loads((run / "run.json").read_text())["decision"] == rec
    # the clean-up sizes are bounded by the training and validation annotations
    from tomoseg.inference.tuning import size_limits

    masks = [read_mask(p, 2) for split in ("train", "val") for p in sorted(data_masks(data, split))]
    assert rec["size_limits"]["min_size"] == size_limits(masks, 1)[0]
    assert rec["decision"]["min_size"] <= rec["size_limits"]["min_size"]


def data_masks(data: Path, split: str) -> list[Path]:
    folder = data / split / "masks"
    return list(folder.iterdir()) if folder.is_dir() else []


def test_predictor_tta_all_equals_manual_average(tiny):
    data, run = tiny
    image = read_image(next((data / "test" / "images").iterdir()))
    p = Predictor.from_run(run, device="cpu", tta="all", runtime="torch", postprocess=False)
    got = p.predict_proba(image)
    # by hand: one tile covers the image, so the network sees each transformed image whole
    loaded = load_run(run)
    x = torch.from_numpy(normalize(image, loaded.normalization))[None, None]
    with torch.no_grad():
        mean = sum(
            torch.softmax(_OPS[n][1](loaded.model(_OPS[n][0](x))), 1) for n in TRANSFORMS
        ) / len(TRANSFORMS)
    bias = decision_bias(loaded.meta["class_weights"], loaded.config.decision)
    manual = torch.softmax(torch.log(mean) + bias[None, :, None, None], 1)[0].numpy()
    np.testing.assert_allclose(got, manual, atol=1e-5)
    assert (p.predict(image) == manual.argmax(0)).all()
    plain = Predictor.from_run(run, device="cpu", runtime="torch", postprocess=False)
    assert not np.allclose(plain.predict_proba(image), got, atol=1e-6)  # TTA did something


def test_unknown_tta_is_one_error_line(tiny, tmp_path, run_cli):
    data, run = tiny
    img = next((data / "test" / "images").iterdir())
    for args in (
        ["predict", run, img, "--out", tmp_path / "p"],
        ["evaluate", run, "--data", data, "--out", tmp_path / "e"],
        ["segment-stack", run, data / "test" / "images", "--out", tmp_path / "s"],
    ):
        code, _, err = run_cli(*args, "--tta", "spin")
        assert code == 1 and err.count("\n") == 1, err
        assert err.startswith("error: tta: unknown transform 'spin'"), err
    with pytest.raises(TomosegError, match="unknown transform"):
        Predictor.from_run(run, tta="flip_x,spin")


def test_decision_applies_alike_everywhere(tiny, tmp_path, run_cli):
    import tomoseg

    data, run = tiny
    forced = _big_offset(run, tmp_path)
    images = sorted((data / "test" / "images").iterdir())
    # the labels without any tuned decision (the calibrated argmax alone)
    plain = Predictor(load_run(run), postprocess=False)
    ref = [plain.segment(read_image(f))[0] for f in images]
    assert any((r != 1).any() for r in ref)

    # predict (CLI), with and without --no-postprocess
    code, _, err = run_cli("predict", forced, *images, "--out", tmp_path / "p")
    assert code == 0, err
    code, _, err = run_cli("predict", forced, *images, "--out", tmp_path / "p0", "--no-postprocess")
    assert code == 0, err
    for f, r in zip(images, ref, strict=True):
        assert (read_mask(tmp_path / "p" / f"{f.stem}.png") == 1).all()
        assert (read_mask(tmp_path / "p0" / f"{f.stem}.png") == r).all()
    # the API's Predictor
    p = Predictor.from_run(forced, device="cpu")
    assert all((p.predict(read_image(f)) == 1).all() for f in images)
    q = tomoseg.Predictor.from_run(forced, device="cpu", postprocess=False)
    assert all((q.predict(read_image(f)) == r).all() for f, r in zip(images, ref, strict=True))
    # segment-stack (API), the slices of the test split as a stack
    info = tomoseg.segment_stack(forced, data / "test" / "images", tmp_path / "s", format="tiff")
    vol = [read_mask(f) for f in sorted(Path(info["volume"]).iterdir())]
    assert all((v == 1).all() for v in vol)
    stack = json.loads((tmp_path / "s" / "stack.json").read_text())
    assert stack["inference"]["decision"]["offset"] == 1e4
    with pytest.raises(TomosegError, match="another inference.decision"):
        tomoseg.segment_stack(
            forced, data / "test" / "images", tmp_path / "s", format="tiff", postprocess=False
        )
    # evaluate: predictions with it, metrics with and without
    code, out, err = run_cli("evaluate", forced, "--data", data, "--out", tmp_path / "e")
    assert code == 0, err and "without post-processing" in out
    for f in images:
        assert (read_mask(tmp_path / "e" / "predictions" / f"{f.stem}.png") == 1).all()
    m = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert m["inference"]["decision"]["offset"] == 1e4 and m["inference"]["tta"] == ["identity"]
    raw = m["without_postprocess"]
    assert raw["mean"]["iou"] != m["mean"]["iou"]
    # without the decision, evaluate scores exactly what a plain segment gives
    from tomoseg.api import score

    truth = [read_mask(data / "test" / "masks" / f.name) for f in images]
    want = np.mean(
        [
            score(t, r, classes=["background", "fg"])["mean"]["iou"]["fg"]
            for t, r in zip(truth, ref, strict=True)
        ]
    )
    assert raw["mean"]["iou"]["fg"] == pytest.approx(want)


def test_tune_command_rewrites_the_decision(tiny, tmp_path, run_cli):
    import shutil

    data, run = tiny
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "decision.json").unlink()
    code, out, err = run_cli("tune", copy, "--data", data, "--tta", "flips")
    assert code == 0, err
    rec = json.loads((copy / "decision.json").read_text())
    assert rec["tta"] == ["identity", "flip_y", "flip_x", "rot180"] and "decision:" in out


def test_decision_of_other_weights_is_not_applied(tiny, tmp_path):
    from tomoseg.errors import TomosegWarning

    _, run = tiny
    forced = _big_offset(run, tmp_path)
    rec = json.loads((forced / "decision.json").read_text())
    (forced / "decision.json").write_text(json.dumps({**rec, "epoch": 7}))
    image = np.full(SHAPE, 10, np.uint8)
    with pytest.warns(TomosegWarning, match="tuned on the weights of epoch 7"):
        labels = Predictor.from_run(forced, device="cpu").predict(image)
    assert not (labels == 1).all()


def test_ema_weights_are_exported_and_differ_from_the_raw_ones(tmp_path):
    data = make_dataset(tmp_path / "d", shape=SHAPE)
    cfg = load_config(None, {**TINY, "epochs": 2, "ema_decay": 0.5, "tune_decision": False})
    run = train(data, tmp_path / "run", cfg)
    ck = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    avg, raw = ck["state_dict"], ck["current_model_state"]
    last = load_file(run / "last.safetensors")
    for k, v in last.items():
        assert torch.equal(v, avg[f"net.{k}"]), k
    assert any(not torch.equal(avg[k], raw[k]) for k in raw if k.startswith("net."))
    bn = [k for k in last if k.endswith("running_mean")]
    assert bn and any(not torch.equal(avg[f"net.{k}"], raw[f"net.{k}"]) for k in bn)
    assert not (run / "decision.json").exists()


def test_ema_decay_setting_parses_and_refuses_in_one_line(tmp_path, run_cli):
    from tomoseg.config.schema import TrainConfig

    assert TrainConfig().ema_decay == "auto"
    for given, want in [("auto", "auto"), ("off", None), ("none", None), (False, None)]:
        assert load_config(None, {"ema_decay": given}).ema_decay == want
    assert load_config(None, {"ema_decay": "0.99"}).ema_decay == 0.99
    for bad in ("fast", 1.5, 0, True):
        with pytest.raises(TomosegError, match="ema_decay must be a number in"):
            load_config(None, {"ema_decay": bad})
    data = make_dataset(tmp_path / "d", shape=SHAPE)
    code, _, err = run_cli("train", "--data", data, "--out", tmp_path / "r", "--ema-decay", "2")
    assert code == 1 and err.count("\n") == 1 and "ema_decay must be" in err, err


def test_ema_decay_auto_follows_the_run_length(tmp_path, monkeypatch):
    """``auto`` averages from EMA_MIN_STEPS optimizer steps (with EMA_AUTO_DECAY) and not in
    shorter runs, whose exported weights are then the raw ones; run.json records the decay."""
    import tomoseg.training.module as module

    assert module.ema_decay_for("auto", module.EMA_MIN_STEPS - 1) is None
    assert module.ema_decay_for("auto", module.EMA_MIN_STEPS) == module.EMA_AUTO_DECAY
    assert module.ema_decay_for(0.5, 1) == 0.5 and module.ema_decay_for(None, 10**6) is None
    data = make_dataset(tmp_path / "d", shape=SHAPE)
    cfg = load_config(None, {**TINY, "epochs": 2, "tune_decision": False})  # 8 steps
    short = train(data, tmp_path / "short", cfg)
    assert json.loads((short / "run.json").read_text())["ema_decay"] is None
    assert "current_model_state" not in torch.load(
        short / "checkpoints" / "last.ckpt", weights_only=True
    )
    monkeypatch.setattr(module, "EMA_MIN_STEPS", 8)
    long = train(data, tmp_path / "long", cfg)
    assert json.loads((long / "run.json").read_text())["ema_decay"] == module.EMA_AUTO_DECAY
    ck = torch.load(long / "checkpoints" / "last.ckpt", weights_only=True)
    assert any(
        not torch.equal(ck["state_dict"][k], v) for k, v in ck["current_model_state"].items()
    )


def _probe(step=0.5, steps=20, val=4.0, seconds=6.0):
    return Probe(
        steps=5,
        seconds_per_step=step,
        steps_per_epoch=steps,
        validation_seconds=val,
        validation_images=2,
        seconds=seconds,
    )


def test_plan_epochs_fits_the_budget():
    probe = _probe()  # 10 s training + 4 s validation per epoch
    plan = plan_epochs(10, probe, tuning_passes=2)
    e = plan["epochs"]
    # the planned run fits; one more epoch would not
    spent = lambda n: n * (10 + 1.5) + validations(n, 1) * 4 + 2 * 4  # noqa: E731
    avail = 600 * (1 - 0.08) - 6 - 5
    assert spent(e) <= avail < spent(e + 1)
    assert plan["planned_minutes"] <= 10
    assert validations(5, 2) == 3 and validations(4, 2) == 2
    assert plan_epochs(10, probe, val_every=4)["epochs"] > e  # fewer validations, more epochs
    with pytest.raises(TomosegError, match="below one epoch: one epoch takes about 0.3 min"):
        plan_epochs(0.2, probe)


def test_time_budget_plans_the_epochs_and_records_them(tmp_path, run_cli, monkeypatch):
    import tomoseg.training.budget as budget

    data = make_dataset(tmp_path / "d", shape=SHAPE)
    # a 0.1 s step, 4 steps an epoch, 1 s validation: 3.1 s an epoch with the overhead
    fixed = Probe(3, 0.1, 4, 1.0, 1, 0.5)
    monkeypatch.setattr(budget, "probe_throughput", lambda *a, **k: fixed)
    cfg = load_config(None, {k: v for k, v in TINY.items() if k != "epochs"} | {"time_budget": 0.5})
    run = train(data, tmp_path / "run", cfg)
    meta = json.loads((run / "run.json").read_text())
    plan = meta["time_budget"]["plan"]
    want = plan_epochs(0.5, fixed, tuning_passes=2)["epochs"]
    assert plan["epochs"] == want and meta["config"]["epochs"] == want
    assert meta["time_budget"]["probe"]["steps_per_epoch"] == 4
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == want + 1
    with pytest.raises(TomosegError, match="not both"):
        load_config(None, {"epochs": 3, "time_budget": 5})
    monkeypatch.undo()  # the real probe: a budget below one epoch is one error line
    code, _, err = run_cli(
        "train",
        "--data",
        data,
        "--out",
        tmp_path / "r2",
        "--time-budget",
        "0.001",
        "--crop-size",
        "32",
        "--quiet",
    )
    assert code == 1 and err.count("\n") == 1 and "below one epoch" in err, err


def test_segment_stack_feeds_the_runs_tta(tiny, tmp_path):
    data, run = tiny
    src = tmp_path / "stack"
    rng = np.random.default_rng(0)
    for i in range(2):
        write_png(src / f"z{i:03d}.png", rng.integers(0, 200, SHAPE).astype(np.uint8))
    import tomoseg

    tomoseg.segment_stack(run, src, tmp_path / "o", format="tiff", tta="flips", runtime="torch")
    vol = [read_mask(f) for f in sorted((tmp_path / "o" / "labels").iterdir())]
    p = Predictor.from_run(run, device="cpu", tta="flips", runtime="torch")
    for f, v in zip(sorted(src.iterdir()), vol, strict=True):
        assert (p.predict(read_image(f)) == v).all()
