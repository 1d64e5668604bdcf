"""``sweep --images/--masks`` with ``--test-images/--test-masks``: the data read as ``train`` and
``evaluate`` read it (one rule for every label convention), refused without test images, and a
tiny sweep end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
from conftest import make_dataset, one_error, write_png
from PIL import Image

import tomoseg
from tomoseg.config.schema import load_config
from tomoseg.data.sources import DataSource
from tomoseg.errors import TomosegError
from tomoseg.experiments import sweep as sw
from tomoseg.experiments.case import case_command
from tomoseg.experiments.cells import Case
from tomoseg.experiments.sweep_data import SweepData

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = {"width": 4, "depth": 3, "epochs": 1, "batch_size": 4, "tile_size": 64}
SHAPE = (48, 56)


def folders(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """Training and test images/ + masks/ folders (a dataset's splits, laid out as a user's)."""
    d = make_dataset(tmp_path / "d", shape=SHAPE, n={"train": 3, "test": 2})
    return (
        d / "train" / "images",
        d / "train" / "masks",
        d / "test" / "images",
        d / "test" / "masks",
    )


def sweep_args(tmp_path: Path, *data) -> list:
    cfg = tmp_path / "base.yaml"
    cfg.write_text(yaml.safe_dump(BASE))
    return ["sweep", *data, "--out", tmp_path / "sw", "--config", cfg, "--sizes", "16",
            "--counts", "8"]  # fmt: skip


def train_args(tmp_path: Path, *data) -> list:
    return ["train", *data, "--out", tmp_path / "run", "--width", "4", "--depth", "3",
            "--epochs", "1", "--crops", "8", "--crop-size", "16", "--device", "cpu"]  # fmt: skip


def test_images_without_test_images_refused_with_one_line(tmp_path, run_cli):
    im, mk, ti, tm = folders(tmp_path)
    line = one_error(run_cli, *sweep_args(tmp_path, "--images", im, "--masks", mk))
    assert "--test-images DIR and --test-masks DIR" in line
    line = one_error(run_cli, *sweep_args(tmp_path, "--images", im, "--masks", mk,
                                          "--test-images", ti))  # fmt: skip
    assert "--test-images DIR and --test-masks DIR" in line
    data = tmp_path / "d"
    line = one_error(run_cli, *sweep_args(tmp_path, "--data", data, "--test-images", ti,
                                          "--test-masks", tm))  # fmt: skip
    assert "go with --images DIR and --masks DIR" in line and "test split" in line
    assert not (tmp_path / "sw").exists()
    with pytest.raises(TomosegError, match="test_images=DIR and test_masks=DIR"):
        SweepData.of(DataSource.of(images=im, masks=mk))


def _cellpose(root: Path, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        mask = np.zeros(SHAPE, np.uint8)
        mask[10:20, 12 + 5 * i : 24 + 5 * i] = 1
        tifffile.imwrite(
            root / f"img_{i}.tif", (mask * 90 + rng.integers(0, 40, SHAPE)).astype(np.uint8)
        )
        write_png(root / f"img_{i}_masks.png", mask)
    return root


def _instances(root: Path, n: int) -> tuple[Path, Path]:
    """napari-style instance labels: separate discs, ids from a counter, as int32 TIFF."""
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    for i in range(n):
        lab = np.zeros(SHAPE, np.int32)
        for j in range(6):
            lab[(yy - 20) ** 2 + (xx - 5 - 9 * j) ** 2 <= 9] = 100 * i + j + 1
        write_png(root / "images" / f"s{i}.png", ((lab > 0) * 120).astype(np.uint8))
        (root / "masks").mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(root / "masks" / f"s{i}.tif", lab)
    return root / "images", root / "masks"


@pytest.mark.parametrize("fault", ["same_folder", "instances", "ilastik", "test_ids"])
def test_label_rules_as_train(tmp_path, run_cli, fault):
    """Each label fault gives the same one line as train (the test masks: as evaluate reads a
    truth), before any case runs."""
    im, mk, ti, tm = folders(tmp_path)
    if fault == "same_folder":
        im = mk = _cellpose(tmp_path / "cp", 3, 0)
    elif fault == "instances":
        im, mk = _instances(tmp_path / "np", 3)
    elif fault == "ilastik":  # ids 1, 2 with no 0
        for f in mk.iterdir():
            write_png(f, np.asarray(Image.open(f)) + 1)
    else:  # a test mask with an id that is no class (classes 0, 1 from the training masks)
        m = tm / sorted(p.name for p in tm.iterdir())[0]
        write_png(m, np.full(SHAPE, 2, np.uint8))
    data = ["--images", im, "--masks", mk]
    line = one_error(run_cli, *sweep_args(tmp_path, *data, "--test-images", ti, "--test-masks",
                                          tm))  # fmt: skip
    if fault == "test_ids":
        assert "truth folder" in line and str(tm) in line
    else:
        assert one_error(run_cli, *train_args(tmp_path, *data)) == line
    assert not (tmp_path / "sw" / "cases").exists()


def test_conventions_accepted_as_train(tmp_path):
    """Cellpose's one folder with a mask suffix, instance labels binarised on request, an
    ignore label: the sweep's classes are train's; the case process gets the same source."""
    cfg = load_config(None, BASE)
    cp, cpt = _cellpose(tmp_path / "cp", 3, 0), _cellpose(tmp_path / "cpt", 2, 1)
    data = SweepData.of(DataSource.of(images=cp, masks=cp, mask_suffix="_masks"), cpt, cpt)
    sw.prepare_sweep(tmp_path / "a", data, cfg, [16], [8], 1)
    rec = json.loads((tmp_path / "a" / "sweep.json").read_text())
    assert rec["classes"] == ["0", "1"] and rec["source"]["test"]["mask_suffix"] == "_masks"
    im, mk = _instances(tmp_path / "np", 3)
    ti, tm = _instances(tmp_path / "npt", 2)
    source = DataSource.of(images=im, masks=mk, instances="binarize", classes="bg,cell")
    data = SweepData.of(source, ti, tm)
    sw.prepare_sweep(tmp_path / "b", data, cfg, [16], [8], 1)
    assert json.loads((tmp_path / "b" / "sweep.json").read_text())["classes"] == ["bg", "cell"]
    cmd = case_command(Case(16, 8, 0, 0), data, tmp_path / "c", tmp_path / "cfg", tmp_path / "x")
    back = SweepData.from_json(cmd[cmd.index("--source") + 1])
    assert back == data and back.test is not None and back.test.instances == "binarize"
    # an ignore label: the config's, as train's --ignore-label
    im2, mk2, ti2, tm2 = folders(tmp_path / "ig")
    for f in [*mk2.iterdir(), *tm2.iterdir()]:
        m = np.asarray(Image.open(f)).copy()
        m[:4] = 255
        write_png(f, m)
    data = SweepData.of(DataSource.of(images=im2, masks=mk2), ti2, tm2)
    with pytest.raises(TomosegError) as refused:
        sw.prepare_sweep(tmp_path / "c", data, cfg, [16], [8], 1)
    with pytest.raises(TomosegError) as by_train:
        tomoseg.train(images=im2, masks=mk2, out=tmp_path / "r", **BASE)
    assert str(refused.value) == str(by_train.value)
    sw.prepare_sweep(tmp_path / "c", data, load_config(None, {**BASE, "ignore_label": 255}),
                     [16], [8], 1)  # fmt: skip


@pytest.mark.slow  # a sweep case is a process of its own (~10-20 s)
def test_tiny_sweep_from_images_and_masks(tmp_path, run_cli):
    im, mk, ti, tm = folders(tmp_path)
    code, out, err = run_cli(*sweep_args(tmp_path, "--images", im, "--masks", mk,
                                         "--test-images", ti, "--test-masks", tm))  # fmt: skip
    assert code == 0, err
    case = tmp_path / "sw" / "cases" / "s16_n8_r0"
    rec = json.loads((case / "case.json").read_text())
    assert rec["status"] == "done" and set(rec["iou"]) == {"0", "1"}
    metrics = json.loads((case / "eval" / "metrics.json").read_text())
    assert sorted(i["id"] for i in metrics["per_image"]) == sorted(p.stem for p in ti.iterdir())
    run = json.loads((case / "run" / "run.json").read_text())
    assert run["data"]["images"] == str(im.resolve())
    assert run["validation"]["source"] == "held out of train"  # as train --images/--masks
    rows = list(csv.DictReader((tmp_path / "sw" / "results.csv").open()))
    assert [(r["size"], r["count"], r["status"]) for r in rows] == [("16", "8", "done")]
    # the same command again: the finished case is not rerun
    code, out, err = run_cli(*sweep_args(tmp_path, "--images", im, "--masks", mk,
                                         "--test-images", ti, "--test-masks", tm))  # fmt: skip
    assert code == 0 and "1 already finished" in out + err, err
