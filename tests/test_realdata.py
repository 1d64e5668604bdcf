"""Slow end-to-end checks on the real datasets in ../shared/data (run with ``pytest -m slow``;
``scripts/test.sh`` runs them after the default suite). They skip where the data is absent."""

import json

import pytest
from conftest import shared_dataset

pytestmark = [pytest.mark.slow, pytest.mark.realdata]


def test_default_network_beats_otsu_on_xct_dendrite(tmp_path, run_cli):
    """A short training of the default configuration already beats the Otsu threshold
    (test IoU 0.768, BF1 0.405 on these two test slices) on both IoU and BF1."""
    data = shared_dataset("xct-dendrite")
    run = tmp_path / "run"
    code, _, err = run_cli(
        "train", "--data", data, "--out", run, "--epochs", "4", "--crops", "256", "--quiet"
    )
    assert code == 0, err
    code, _, err = run_cli("evaluate", run, "--data", data, "--out", tmp_path / "ev")
    assert code == 0, err
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["mean"]["iou"]["dendrite"] > 0.78
    assert m["mean"]["bf1"]["dendrite"] > 0.45


def test_seed_config_trains_and_evaluates(tmp_path, run_cli):
    """configs/seed.yaml (SegNet) runs end to end on real data (a tiny budget: it is a wiring check)."""
    data = shared_dataset("xct-dendrite")
    run = tmp_path / "seed"
    code, _, err = run_cli(
        "train",
        "--data",
        data,
        "--out",
        run,
        "--config",
        "seed",
        "--epochs",
        "1",
        "--crops",
        "16",
        "--quiet",
    )
    assert code == 0, err
    meta = json.loads((run / "run.json").read_text())
    assert meta["model"]["name"] == "segnet" and meta["model"]["width"] == 64
    code, _, err = run_cli("evaluate", run, "--data", data, "--out", tmp_path / "ev")
    assert code == 0, err
