"""The crop sweep: grid parsing, failed cases, resume after kill -9, grid extension, report."""

import csv
import json
import os
import signal
import subprocess
import sys

import pytest
import yaml
from conftest import make_dataset, wait_for

from tomoseg.config.schema import load_config
from tomoseg.errors import TomosegError
from tomoseg.experiments import cells
from tomoseg.experiments import sweep as sw

BASE = {"width": 4, "depth": 3, "epochs": 2, "batch_size": 4, "tile_size": 64}
TIMING = ("train_seconds", "seconds_per_epoch")


def test_parse_grid():
    assert cells.parse_sizes("64, 224,full") == [64, 224, 0]
    assert cells.parse_counts("250,500") == [250, 500]
    for bad in ("", "64,,128", "abc", "8", "64,64"):
        with pytest.raises(TomosegError):
            cells.parse_sizes(bad)
    for bad in ("", "0", "-5", "x", "1,1"):
        with pytest.raises(TomosegError):
            cells.parse_counts(bad)
    with pytest.raises(TomosegError, match="repeats"):
        cells.plan_cases([64], [10], 0, 0)
    cases = cells.plan_cases([64, 0], [10, 20], 2, 5)
    assert len(cases) == 8 and cases[0].id == "s64_n10_r0" and cases[-1].id == "sfull_n20_r1"
    assert {c.seed for c in cases if c.repeat == 1} == {6}
    assert [c.repeat for c in cases[:4]] == [0, 0, 0, 0]  # repeat-major


def test_noise_verdicts():
    mk = cells.CellStats
    stats = [
        mk(64, 10, 3, 0, 0.80, 0.01, 0.5, 0.01),
        mk(128, 10, 3, 0, 0.79, 0.01, 0.5, 0.01),
        mk(256, 10, 3, 0, 0.60, 0.01, 0.4, 0.01),
    ]
    best, verdicts = cells.noise_verdicts(stats)
    assert best.size == 64
    assert dict((c.size, v) for c, v in verdicts) == {128: True, 256: False}


def _table(out):
    rows = list(csv.DictReader((out / "results.csv").open()))
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.fixture
def sweep_data(tmp_path):
    data = make_dataset(tmp_path / "d", shape=(48, 56))
    cfg_file = tmp_path / "base.yaml"
    cfg_file.write_text(yaml.safe_dump(BASE))
    return data, cfg_file


@pytest.mark.slow  # long (10-25 s): keeps the default suite within 5 minutes
def test_failed_case_recorded_and_others_go_on(tmp_path, sweep_data, monkeypatch):
    data, cfg_file = sweep_data
    real = sw.case_command

    def command(case, *a, **k):
        if case.size == 32:
            return [
                sys.executable,
                "-c",
                "import sys; sys.exit('error: simulated crash in this case')",
            ]
        return real(case, *a, **k)

    monkeypatch.setattr(sw, "case_command", command)
    out = tmp_path / "sw"
    recs = sw.run_sweep(data, out, load_config(cfg_file), [16, 32], [8], 1, 1)
    status = {r["id"]: r["status"] for r in recs}
    assert status == {"s16_n8_r0": "done", "s32_n8_r0": "failed"}
    rows = _table(out)
    assert rows[1]["status"] == "failed" and "simulated crash" in rows[1]["error"]
    # a finished case keeps only the weights it delivers (last, by default): no checkpoints
    kept = out / "cases" / "s16_n8_r0" / "run"
    assert (kept / "last.safetensors").is_file() and not (kept / "best.safetensors").exists()
    assert not list(kept.rglob("*.ckpt"))
    html = (out / "report.html").read_text()
    assert "simulated crash" in html and "data:image/png;base64," in html
    # a finished case is not rerun; --retry-failed reruns the failed one (now succeeding)
    monkeypatch.setattr(sw, "case_command", real)
    before = (out / "cases" / "s16_n8_r0" / "case.json").read_text()
    recs = sw.run_sweep(data, out, load_config(cfg_file), [16, 32], [8], 1, 1, retry_failed=True)
    assert all(r["status"] == "done" for r in recs)
    assert (out / "cases" / "s16_n8_r0" / "case.json").read_text() == before


@pytest.mark.slow  # several sweep cases, each a process of its own (~20-45 s)
def test_resume_after_kill_equals_uninterrupted(tmp_path, sweep_data):
    data, cfg_file = sweep_data
    args = ["--data", str(data), "--sizes", "16,full", "--counts", "8", "--config", str(cfg_file)]
    ref = tmp_path / "ref"
    assert (
        subprocess.run(
            [sys.executable, "-m", "tomoseg.cli", "sweep", "--out", str(ref), *args],
            capture_output=True,
        ).returncode
        == 0
    )
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tomoseg.cli", "sweep", "--out", str(out), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:  # cases run in order: the second one is training once its run.json is written
        wait_for(
            lambda: (
                len(list(out.glob("cases/*/case.json"))) == 1
                and len(list(out.glob("cases/*/run/run.json"))) == 2
            ),
            "the first case finished and the second one training",
            proc=proc,
        )
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finished = {p.parent.name for p in out.glob("cases/*/case.json")}
    assert finished and len(finished) < 2, finished
    first = (out / "cases" / sorted(finished)[0] / "case.json").read_text()
    res = subprocess.run(
        [sys.executable, "-m", "tomoseg.cli", "sweep", "--out", str(out), *args],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    assert "1 already finished" in res.stdout
    assert (
        out / "cases" / sorted(finished)[0] / "case.json"
    ).read_text() == first  # not recomputed
    assert _table(out) == _table(ref)


@pytest.mark.slow  # several sweep cases, each a process of its own (~20-45 s)
def test_extension_and_changed_config(tmp_path, sweep_data, run_cli):
    data, cfg_file = sweep_data
    out = tmp_path / "sw"
    sw.run_sweep(data, out, load_config(cfg_file), [16], [8], 1, 1)
    sw.run_sweep(data, out, load_config(cfg_file), [16], [8, 12], 1, 1)  # grid extended
    assert [r["count"] for r in _table(out)] == ["8", "12"]
    assert json.loads((out / "sweep.json").read_text())["grid"]["counts"] == [8, 12]
    cfg2 = tmp_path / "b2.yaml"
    cfg2.write_text(yaml.safe_dump({**BASE, "lr": 0.01}))
    code, _, err = run_cli(
        "sweep", "--data", data, "--out", out, "--sizes", "16", "--counts", "8", "--config", cfg2
    )
    assert code == 1 and err.startswith("error:") and "another base config.lr (" in err
    code, outp, err = run_cli(
        "sweep",
        "--data",
        data,
        "--out",
        out,
        "--sizes",
        "16",
        "--counts",
        "8",
        "--config",
        cfg2,
        "--new",
        "--dry-run",
    )
    assert code == 0 and "sw-2" in outp and "estimated total" in outp


def test_bad_sweep_inputs(tmp_path, sweep_data, run_cli):
    data, cfg_file = sweep_data

    def err(*extra):
        code, _, e = run_cli(
            "sweep", "--data", data, "--out", tmp_path / "o", "--config", cfg_file, *extra
        )
        lines = e.strip().splitlines()
        assert code != 0 and len(lines) == 1 and lines[0].startswith("error:"), e
        return lines[0]

    assert "--sizes" in err("--sizes", "")
    assert "below the minimum of 16" in err("--sizes", "8", "--counts", "8")
    assert "below the minimum of 1" in err("--sizes", "16", "--counts", "0")
    assert "repeats" in err("--sizes", "16", "--counts", "8", "--repeats", "0")
    no_test = make_dataset(tmp_path / "nt", shape=(48, 56), n={"train": 2, "val": 1})
    code, _, e = run_cli(
        "sweep", "--data", no_test, "--out", tmp_path / "o2", "--sizes", "16", "--counts", "8"
    )
    assert code != 0 and "no 'test' split" in e


def test_jobs_clamped_with_warning():
    msgs = []
    n = sw.clamp_jobs(10_000, msgs.append)
    assert n >= 1 and msgs and "warning" in msgs[0]
    with pytest.raises(TomosegError):
        sw.clamp_jobs(0, msgs.append)


@pytest.mark.slow  # several sweep cases, each a process of its own (~20-45 s)
def test_cancel_midway_then_rerun_equals_uninterrupted(tmp_path, sweep_data):
    """Cancel from the progress callback while the second case trains (the event set when that
    case reports its first epoch): it stops at its next batch, unrecorded; the rerun resumes
    it to the uninterrupted sweep's table."""
    import threading

    from tomoseg.utils.progress import Cancelled

    data, cfg_file = sweep_data
    cfg = load_config(cfg_file)
    ref = tmp_path / "ref"
    sw.run_sweep(data, ref, cfg, [16, 0], [8], 1, 1)
    out, stop, events = tmp_path / "sw", threading.Event(), []

    def on_event(event):
        events.append(event)
        if event.kind == "message" and event.message.startswith("  sfull_n8_r0: epoch 1:"):
            stop.set()

    with pytest.raises(Cancelled, match=r"sweep cancelled after 1/2 cases"):
        sw.run_sweep(data, out, cfg, [16, 0], [8], 1, 1, progress=on_event, cancel=stop)
    advances = [e for e in events if e.kind == "advance"]
    assert [(e.unit, e.done, e.total) for e in advances] == [("case", 1, 2)]
    assert advances[0].eta is not None and advances[0].metrics["status"] == "done"
    assert not (out / "cases" / "sfull_n8_r0" / "case.json").exists()  # never recorded
    assert (out / "cases" / "sfull_n8_r0" / "run" / "checkpoints" / "last.ckpt").is_file()
    assert not (out / "cancel").exists()
    first = (out / "cases" / "s16_n8_r0" / "case.json").read_text()
    again = []
    recs = sw.run_sweep(data, out, cfg, [16, 0], [8], 1, 1, progress=again.append)
    assert [r["status"] for r in recs] == ["done", "done"]
    assert [(e.kind, e.done) for e in again if e.kind in ("start", "advance")] == [
        ("start", 1),
        ("advance", 2),
    ]
    assert (out / "cases" / "s16_n8_r0" / "case.json").read_text() == first  # not rerun
    assert _table(out) == _table(ref)


def test_dry_run_estimate_is_quick_and_says_what_it_is_based_on(sweep_data):
    import time

    data, cfg_file = sweep_data
    t0 = time.perf_counter()
    est = sw.estimate_seconds(data, load_config(cfg_file), [16, 0], [8, 12], 2)
    assert time.perf_counter() - t0 < 300  # timed steps, no training (a loaded machine)
    assert len(est.per_case) == 8 and est.total == pytest.approx(sum(est.per_case.values()))
    assert est.per_case["s16_n12_r0"] > est.per_case["s16_n8_r0"]  # more crops, more steps
    parts = est.parts["s16_n8_r0"]
    assert set(parts) == {
        "startup",
        "read",
        "train",
        "validation",
        "tuning",
        "evaluation",
        "overhead",
    }
    assert all(v >= 0 for v in parts.values())
    assert any("timed here" in line for line in est.basis)


@pytest.mark.parametrize("weights", ["last", "best"])
def test_prune_case_keeps_only_the_delivered_weights(tmp_path, weights):
    from tomoseg.runtime.run_record import write_run_record

    run = tmp_path / "case" / "run"
    (run / "checkpoints").mkdir(parents=True)
    write_run_record(run, {"config": {"weights": weights}})
    for name in ("best.safetensors", "last.safetensors", "checkpoints/last.ckpt",
                 "checkpoints/best-epoch=1.ckpt", "hpc_ckpt_1.ckpt", "metrics.csv"):  # fmt: skip
        (run / name).write_text("x")
    gone = sw.prune_case(tmp_path / "case")
    other = "best" if weights == "last" else "last"
    assert {p.name for p in gone} == {
        f"{other}.safetensors",
        "last.ckpt",
        "best-epoch=1.ckpt",
        "hpc_ckpt_1.ckpt",
    }
    assert sorted(p.name for p in run.iterdir()) == sorted(
        ["metrics.csv", "run.json", f"{weights}.safetensors"]
    )
    assert sw.prune_case(tmp_path / "case") == []  # idempotent


def test_cases_train_a_fixed_number_of_epochs_not_train_s_time_budget(tmp_path, sweep_data):
    from types import SimpleNamespace

    from tomoseg.cli.sweep import SWEEP_EPOCHS, _grid

    data, cfg_file = sweep_data
    o = SimpleNamespace(
        demo=False, data=data, images=None, masks=None, test_images=None, test_masks=None,
        classes=None, image_suffix=None, mask_suffix=None, instances="error", out=tmp_path / "o",
        sizes="16", counts="8", epochs=None, max_minutes=None, ignore_label=None,
        val_fraction=None, config=None,
    )  # fmt: skip
    cfg = _grid(o)[-1]
    assert (cfg.epochs, cfg.time_budget) == (SWEEP_EPOCHS, None)
    o.epochs = 3
    assert (_grid(o)[-1].epochs, _grid(o)[-1].time_budget) == (3, None)
    o.epochs, o.config = None, cfg_file  # the file's epochs
    assert _grid(o)[-1].epochs == BASE["epochs"]


def test_sweep_sizes_larger_than_the_images_are_one_warning(tmp_path, sweep_data, recwarn):
    from tomoseg.errors import TomosegWarning

    data, cfg_file = sweep_data  # 48x56 images
    cfg = load_config(cfg_file)
    with pytest.warns(TomosegWarning, match=r"^sizes=64 is larger .* \(48 px\)") as caught:
        sw.prepare_sweep(tmp_path / "o", data, cfg, [32, 64, cells.FULL], [8], 1)
    assert sum(issubclass(w.category, TomosegWarning) for w in caught) == 1
    recwarn.clear()
    sw.prepare_sweep(tmp_path / "o2", data, cfg, [32, cells.FULL], [8], 1)
    assert not [w for w in recwarn if issubclass(w.category, TomosegWarning)]
