"""torch.compile of the training steps (``TrainConfig.compile``; training/module.py)."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from conftest import make_dataset

from tomoseg.config.schema import load_config
from tomoseg.errors import TomosegWarning
from tomoseg.training.budget import Probe, plan_epochs
from tomoseg.training.module import COMPILE_MIN_STEPS, SegModule, compile_wanted
from tomoseg.training.trainer import train

TINY = {"crop_size": 32, "crops": 16, "batch_size": 4, "width": 4, "depth": 3, "tile_size": 64}


def _module(**kw) -> SegModule:
    cfg = load_config(None, {**TINY, "epochs": 1, **kw})
    torch.manual_seed(0)
    return SegModule(cfg.model_dump(mode="json"), ["bg", "fg"], "fg", [0.6, 3.0])


def test_compile_wanted_follows_the_setting_and_the_break_even():
    assert compile_wanted("on", 1) and not compile_wanted("off", 10**6)
    assert compile_wanted("auto", COMPILE_MIN_STEPS)
    assert not compile_wanted("auto", COMPILE_MIN_STEPS - 1)
    with pytest.raises(ValueError, match="compile"):
        load_config(None, {"compile": "yes"})


def test_a_failing_compile_warns_once_and_trains_eager(monkeypatch):
    calls = []

    def broken(net):
        calls.append(net)

        def run(x):
            raise RuntimeError("InductorError: no C++ compiler\nlong traceback")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    m = _module()
    m.compile_steps = True
    x = torch.rand(4, 1, 32, 32)
    with pytest.warns(TomosegWarning, match="torch.compile failed.*no C\\+\\+ compiler$"):
        out = m.train_forward(x)
    assert torch.equal(out, m.net(x)) and not m.compile_steps and len(calls) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m.train_forward(x)  # eager from now on, no second warning
    assert len(calls) == 1


def test_only_full_batches_of_the_crop_shape_run_compiled(monkeypatch):
    seen = []

    def fake(net):
        def run(x):
            seen.append(tuple(x.shape))
            return net(x)

        return run

    monkeypatch.setattr(torch, "compile", fake)
    m = _module()
    m.compile_steps = True
    for shape in [(4, 1, 32, 32), (2, 1, 32, 32), (4, 1, 40, 32)]:
        assert torch.equal(m.train_forward(torch.ones(shape)), m.net(torch.ones(shape)))
    assert seen == [(4, 1, 32, 32)]  # the short batch and other sizes ran eager
    # the compiled callable is neither state nor copied (EMA's average copies the module)
    assert "_compiled_net" in m.__dict__
    assert not any("compiled" in k for k in m.state_dict())
    assert "_compiled_net" not in copy.deepcopy(m).__dict__


def test_time_budget_plans_with_the_compiled_steps(tmp_path, monkeypatch):
    """With compiling wanted, a second probe times compiled steps; the plan uses their speed
    and reserves the compile time; run.json records both."""
    import tomoseg.training.budget as budget

    data = make_dataset(tmp_path / "d")
    eager = Probe(5, 0.1, 4, 1.0, 1, 0.5)
    fast = Probe(5, 0.05, 4, 0.0, 0, 2.0, compile_seconds=1.5)
    probes = []

    def probe(module, *a, **k):
        probes.append((module.compile_steps, k.get("validate", True)))
        return fast if module.compile_steps else eager

    monkeypatch.setattr(budget, "probe_throughput", probe)
    monkeypatch.setattr(torch, "compile", lambda net: net)  # the wiring, not Inductor
    cfg = load_config(None, {**TINY, "time_budget": 0.5, "compile": "on"})
    run = train(data, tmp_path / "run", cfg)
    meta = json.loads((run / "run.json").read_text())
    assert probes == [(False, True), (True, False)]
    p = meta["time_budget"]["probe"]
    assert p["seconds_per_step"] == 0.05 and p["compile_seconds"] == 1.5
    assert p["validation_seconds"] == 1.0 and p["seconds"] == 2.5
    merged = Probe(5, 0.05, 4, 1.0, 1, 2.5, compile_seconds=1.5)
    assert (
        meta["time_budget"]["plan"]["epochs"] == plan_epochs(0.5, merged, tuning_passes=2)["epochs"]
    )
    assert plan_epochs(0.5, merged)["available_seconds"] == pytest.approx(
        plan_epochs(0.5, Probe(5, 0.05, 4, 1.0, 1, 4.0))["available_seconds"]
    )  # the compile time is reserved like probe time
    assert meta["compiled"] is True
    # auto with a short run: no second probe, eager steps
    probes.clear()
    cfg = load_config(None, {**TINY, "time_budget": 0.5})
    run = train(data, tmp_path / "run2", cfg)
    assert probes == [(False, True)]
    assert json.loads((run / "run.json").read_text())["compiled"] is False


@pytest.mark.slow
def test_training_with_a_real_compile(tmp_path):
    """Inductor really compiles the tiny network's training steps (a C++ compiler is on this
    machine): the run completes without a fallback warning and learns something finite."""
    data = make_dataset(tmp_path / "d")
    cfg = load_config(None, {**TINY, "epochs": 2, "compile": "on"})
    with warnings.catch_warnings():
        warnings.simplefilter("error", TomosegWarning)
        run = train(data, tmp_path / "run", cfg)
    meta = json.loads((run / "run.json").read_text())
    assert meta["compiled"] is True and meta["config"]["compile"] == "on"
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and "nan" not in rows[-1].split(",")[2]
