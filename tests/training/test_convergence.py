"""The default schedule (a time budget) and the convergence check of a run's validation IoU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY_TRAIN, make_dataset

from tomoseg.config.schema import DEFAULT_TIME_BUDGET, TrainConfig, load_config
from tomoseg.training.convergence import RISE, convergence


def _metrics(path: Path, values: list[float | None], name: str = "soma") -> Path:
    lines = [f"epoch,lr,val_iou_{name}"]
    lines += [f"{e},0.001,{'' if v is None else v}" for e, v in enumerate(values, start=1)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_plateau_is_converged_and_a_rise_is_not(tmp_path):
    flat = [0.2, 0.5, 0.7, 0.78, 0.80, 0.81, 0.80, 0.805]
    check = convergence(_metrics(tmp_path / "flat.csv", flat), "soma")
    assert check is not None and check.converged
    assert (check.first_epoch, check.last_epoch, check.validations) == (7, 8, 2)
    assert check.start == 0.80 and check.end == 0.805 and check.max_step == pytest.approx(0.005)
    assert "converged" in check.text() and "0.800 -> 0.805" in check.text()
    # seen on unseen EM data: 0.74 -> 0.80 over the last four of 24 epochs
    rising = [0.1 + 0.6 * e / 20 for e in range(20)] + [0.74, 0.76, 0.78, 0.80]
    check = convergence(_metrics(tmp_path / "rise.csv", rising), "soma")
    assert check is not None and not check.converged
    assert (check.first_epoch, check.last_epoch) == (19, 24)
    assert check.rise == pytest.approx(0.80 - rising[18]) and check.rise > RISE
    assert "still rose by +0.1" in check.text() and "time budget" in check.text()


def test_epochs_without_validation_are_skipped_and_few_validations_give_no_verdict(tmp_path):
    every_other = [None, 0.5, None, 0.6, None, 0.7, None, 0.71, None, 0.712]
    check = convergence(_metrics(tmp_path / "m.csv", every_other), "soma")
    assert check is not None and (check.first_epoch, check.last_epoch) == (8, 10)
    assert check.converged and check.rise == pytest.approx(0.002)
    assert convergence(_metrics(tmp_path / "few.csv", [0.1, None, 0.5, 0.9]), "soma") is None
    assert convergence(_metrics(tmp_path / "m.csv", every_other), "vessel") is None
    assert convergence(tmp_path / "missing.csv", "soma") is None


def test_the_default_is_a_time_budget_that_epochs_replace():
    assert TrainConfig().time_budget == DEFAULT_TIME_BUDGET == 20.0
    assert load_config().time_budget == DEFAULT_TIME_BUDGET
    assert load_config("default").model_dump() == load_config().model_dump()
    given = load_config(None, {"epochs": 5})
    assert (given.epochs, given.time_budget) == (5, None)
    assert TrainConfig(epochs=3).time_budget is None
    # a file's budget is replaced by epochs given, and a file's epochs by a budget given
    assert load_config("default", {"epochs": 5}).time_budget is None
    seed = load_config("seed")
    assert (seed.epochs, seed.time_budget) == (30, None)
    assert load_config("seed", {"time_budget": 3}).time_budget == 3
    # several processes (DDP): the default epochs, the budget's probe times one process
    assert load_config(None, {"devices": 2}).time_budget is None
    assert load_config("default", {"num_nodes": 2}).time_budget is None
    assert load_config(None, {"devices": 1}).time_budget == DEFAULT_TIME_BUDGET
    # a run's recorded config (both: the planned epochs of its budget) reads back unchanged
    recorded = load_config(None, {"time_budget": 3}).model_copy(update={"epochs": 41})
    again = TrainConfig.model_validate(recorded.model_dump(mode="json"))
    assert (again.epochs, again.time_budget) == (41, 3)


def test_a_run_records_its_convergence_check(tmp_path, one_thread):
    import tomoseg

    data = make_dataset(tmp_path / "d", shape=(40, 48), n={"train": 2, "val": 1, "test": 1})
    run = tomoseg.train(data, tmp_path / "run", **{**TINY_TRAIN, "epochs": 4})
    meta = json.loads((run.path / "run.json").read_text())
    check = convergence(run.path / "metrics.csv", meta["class_of_interest"])
    assert check is not None
    assert meta["convergence"] == json.loads(json.dumps(check.record()))
    assert meta["convergence"]["last_epoch"] == 4 and meta["convergence"]["threshold"] == RISE
