"""Fine-tuning: a new run from a run's weights that keeps its network, classes and
normalisation, records its parent and never touches it; incompatible runs are one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_dataset
from PIL import Image

import tomoseg
from tomoseg.errors import TomosegError


@pytest.fixture
def parent(small_run) -> tuple[Path, Path]:
    return small_run


def _pairs(data: Path, split: str = "train") -> tuple[list[np.ndarray], list[np.ndarray]]:
    files = sorted((data / split / "images").iterdir())
    images = [np.asarray(Image.open(f)) for f in files]
    masks = [np.asarray(Image.open(data / split / "masks" / f.name)) for f in files]
    return images, masks


def _digest(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_fine_tune_keeps_the_parent_and_records_it(parent, tmp_path):
    data, run = parent
    before = _digest(run)
    images, masks = _pairs(data)
    sparse = [np.where(np.arange(m.shape[0])[:, None] < 20, m, 255).astype(np.uint8) for m in masks]
    child = tomoseg.fine_tune(run, images, sparse, tmp_path / "child", ignore_label=255, epochs=1)
    rec = json.loads((child.path / "run.json").read_text())
    old = json.loads((run / "run.json").read_text())
    assert rec["parent"]["run"] == str(run.resolve())
    assert rec["normalization"] == old["normalization"]
    assert rec["model"] == old["model"] and rec["classes"] == old["classes"]
    assert rec["annotated_fraction"] < 1.0  # the untouched rows were unannotated
    assert _digest(run) == before  # the parent is untouched
    p, c = tomoseg.Predictor.from_run(run), tomoseg.Predictor.from_run(child.path)
    assert not all(
        np.array_equal(a.detach(), b.detach())
        for a, b in zip(p.model.state_dict().values(), c.model.state_dict().values(), strict=True)
    )


def test_train_init_from_the_command_line(parent, tmp_path, run_cli):
    data, run = parent
    code, out, err = run_cli(
        "train",
        "--init",
        run,
        "--data",
        data,
        "--out",
        tmp_path / "child",
        "--epochs",
        "1",
        "--quiet",
    )
    assert code == 0, err
    rec = json.loads((tmp_path / "child" / "run.json").read_text())
    assert rec["parent"]["run"] == str(run.resolve())
    assert rec["model"] == json.loads((run / "run.json").read_text())["model"]


def test_incompatible_fine_tunes_are_one_line(parent, tmp_path, run_cli):
    data, run = parent
    code, _, err = run_cli(
        "train", "--init", run, "--data", data, "--out", tmp_path / "c", "--width", "8", "--quiet"
    )
    assert code == 1 and err.count("\n") == 1 and err.startswith("error: --init")
    assert "width 4" in err and "width 8" in err
    code, _, err = run_cli("train", "--init", run, "--data", data, "--out", run, "--overwrite")
    assert code == 1 and "never overwrites its parent" in err and err.count("\n") == 1
    code, _, err = run_cli("train", "--init", tmp_path, "--data", data, "--out", tmp_path / "d")
    assert code == 1 and err.startswith("error: --init") and err.count("\n") == 1
    other = make_dataset(tmp_path / "three", shape=(40, 48), classes=("bg", "a", "b"))
    code, _, err = run_cli(
        "train", "--init", run, "--data", other, "--out", tmp_path / "e", "--quiet"
    )
    assert code == 1 and "classes" in err and err.count("\n") == 1
    images, masks = _pairs(data)
    with pytest.raises(TomosegError, match="labels\\[0\\] holds 7"):
        tomoseg.fine_tune(run, images[:1], [np.full_like(masks[0], 7)], tmp_path / "f")
