"""The weights a run delivers (issue 13): ``last`` (the end of the schedule) by default, ``best``
on request; every command and the API load the same ones, and the decision is tuned on them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_TRAIN, make_dataset
from safetensors.torch import load_file, save_file

import tomoseg
from tomoseg.config.schema import TrainConfig, load_config
from tomoseg.errors import TomosegError
from tomoseg.io.images import read_image, read_mask
from tomoseg.runtime.checkpoint import (
    delivered_weights,
    load_run,
    weights_file_metadata,
    weights_metadata,
)
from tomoseg.training.trainer import train

SHAPE = (40, 48)
TINY = {**TINY_TRAIN, "epochs": 2, "precision": "32"}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(one_thread, tmp_path_factory) -> tuple[Path, Path]:
    """A dataset and a run trained on it for two epochs with the default weights setting."""
    root = tmp_path_factory.mktemp("weights")
    data = make_dataset(root / "data", shape=SHAPE)
    run = train(data, root / "run", load_config(None, TINY), progress=False)
    return data, run


def _rewrite(wfile: Path, *, bias: float = 0.0, drop_setting: bool = False) -> None:
    """Rewrite a weights file in place: the class of interest's output bias raised by ``bias``;
    with ``drop_setting``, metadata as a run written before the ``weights`` setting had it."""
    meta = weights_file_metadata(wfile)
    state = load_file(str(wfile))
    if bias:
        model = load_run(wfile).model
        head = [
            n
            for n, m in model.named_modules()
            if isinstance(m, torch.nn.Conv2d) and m.out_channels == len(meta["classes"])
        ][-1]
        coi = meta["classes"].index(meta["class_of_interest"])
        state[f"{head}.bias"][coi] += bias
    if drop_setting:
        meta["config"].pop("weights")
    save_file(state, str(wfile), metadata=weights_metadata(meta))


@pytest.fixture
def distinct(tiny, tmp_path) -> Path:
    """A copy of the run whose ``best`` weights label every pixel the class of interest, so
    that which weights a path loaded shows in its labels."""
    copy = tmp_path / "distinct"
    shutil.copytree(tiny[1], copy)
    _rewrite(copy / "best.safetensors", bias=1e3)
    return copy


def test_default_run_delivers_and_tunes_last(tiny):
    _, run = tiny
    assert TrainConfig().weights == "last"
    loaded = load_run(run)
    assert loaded.meta["which"] == "last" and loaded.meta["epoch"] == TINY["epochs"]
    assert delivered_weights(run) == "last"
    rec = json.loads((run / "decision.json").read_text())
    assert rec["weights"] == "last" and rec["epoch"] == TINY["epochs"]


def test_weights_best_is_delivered_and_tuned(tiny, tmp_path):
    data, _ = tiny
    run = train(data, tmp_path / "b", load_config(None, {**TINY, "weights": "best"}), False)
    loaded = load_run(run)
    assert delivered_weights(run) == "best" and loaded.meta["which"] == "best"
    rec = json.loads((run / "decision.json").read_text())
    assert rec["weights"] == "best" and rec["epoch"] == loaded.meta["epoch"]


def test_run_written_before_the_setting_delivers_best(tiny, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(tiny[1], old)
    for which in ("best", "last"):
        _rewrite(old / f"{which}.safetensors", drop_setting=True)
    assert delivered_weights(old) == "best"
    assert load_run(old).meta["which"] == "best"


def _labels(path: Path) -> list[np.ndarray]:
    return [
        read_mask(f) for f in sorted(path.iterdir()) if f.is_file() and not f.name.startswith(".")
    ]


@pytest.mark.parametrize("path", ["predict", "evaluate", "segment-stack", "api", "api-stack"])
def test_every_path_loads_the_delivered_weights_unless_told(
    distinct, tiny, tmp_path, run_cli, path
):
    """One content (best weights that label everything the class of interest) through every
    path: by default it is never seen, with ``--weights best`` / ``weights="best"`` always."""
    data, _ = tiny
    images = sorted((data / "test" / "images").iterdir())
    got = {}
    for which in (None, "best"):
        out = tmp_path / str(which)
        opt = [] if which is None else ["--weights", which]
        if path == "predict":
            code, _, err = run_cli("predict", distinct, *images, "--out", out, *opt)
            assert code == 0, err
            got[which] = _labels(out)
        elif path == "evaluate":
            code, _, err = run_cli("evaluate", distinct, "--data", data, "--out", out, *opt)
            assert code == 0, err
            got[which] = _labels(out / "predictions")
            m = json.loads((out / "metrics.json").read_text())
            assert m["inference"]["weights"] == (which or "last")
        elif path == "segment-stack":
            src = data / "test" / "images"
            code, _, err = run_cli(
                "segment-stack", distinct, src, "--out", out, "--format", "tiff", *opt
            )
            assert code == 0, err
            got[which] = _labels(out / "labels")
            stack = json.loads((out / "stack.json").read_text())
            assert stack["run"]["weights"] == f"{which or 'last'}.safetensors"
        elif path == "api":
            p = tomoseg.Predictor.from_run(distinct, device="cpu", weights=which)
            got[which] = [p.predict(read_image(f)) for f in images]
        else:
            src = data / "test" / "images"
            info = tomoseg.segment_stack(distinct, src, out, format="tiff", weights=which)
            got[which] = _labels(Path(info["volume"]))
    assert all((g == 1).all() for g in got["best"])
    assert not all((g == 1).all() for g in got[None])


def test_unknown_weights_is_one_error_line(tiny, tmp_path, run_cli):
    data, run = tiny
    img = next((data / "test" / "images").iterdir())
    for args in (
        ["predict", run, img, "--out", tmp_path / "p"],
        ["evaluate", run, "--data", data, "--out", tmp_path / "e"],
        ["tune", run, "--data", data],
        ["segment-stack", run, data / "test" / "images", "--out", tmp_path / "s"],
    ):
        code, _, err = run_cli(*args, "--weights", "worst")
        assert code == 1 and err.count("\n") == 1, err
        assert err.startswith("error: weights: must be 'last' or 'best', got 'worst'"), err
    code, _, err = run_cli("train", "--data", data, "--out", tmp_path / "t", "--weights", "worst")
    assert code == 1 and err.count("\n") == 1 and "weights" in err, err
    assert not (tmp_path / "t").exists()
    with pytest.raises(ValueError, match="weights: must be"):
        tomoseg.Predictor.from_run(run, weights="worst")


def test_tune_weights_records_and_applies_to_them(distinct, tiny):
    """``tomoseg tune --weights best`` tunes on the best weights and records their epoch (the
    decision applies only to weights of that epoch: ``read_decision``)."""
    data, _ = tiny
    from tomoseg.inference.tuning import tune_run

    tune_run(distinct, data, weights="best", device="cpu", overwrite=True)
    rec = json.loads((distinct / "decision.json").read_text())
    assert rec["weights"] == "best"
    assert rec["epoch"] == load_run(distinct, "best").meta["epoch"]
    with pytest.raises(TomosegError, match="weights: must be"):
        tune_run(distinct, data, weights="final")
