"""The CLI as a user runs it: phantom, check, crops, train/evaluate/predict, demo."""

import json

import numpy as np
import pytest
from conftest import make_dataset

from tomoseg.io.images import read_mask


def test_phantom_check_and_crops(tmp_path, run_cli):
    code, out, err = run_cli(
        "phantom", "--out", tmp_path / "ph", "--shape", "96x128", "--slices", "5"
    )
    assert code == 0, err
    spec = json.loads((tmp_path / "ph" / "dataset.json").read_text())
    assert spec["classes"] == ["background", "soma"]
    code, out, err = run_cli("check", "--data", tmp_path / "ph")
    assert code == 0 and "ok" in out, err
    code, out, err = run_cli(
        "phantom", "--out", tmp_path / "ph", "--shape", "96x128", "--slices", "5"
    )
    assert code == 1 and err.startswith("error:") and "overwrite" in err
    code, out, err = run_cli("phantom", "--out", tmp_path / "p2", "--shape", "96by128")
    assert code == 1 and err.startswith("error:")
    code, out, err = run_cli(
        "crops", "--data", tmp_path / "ph", "--size", "32", "--count", "7", "--out", tmp_path / "cr"
    )
    assert code == 0, err
    assert len(list((tmp_path / "cr" / "masks").glob("*.png"))) == 7
    code, out, err = run_cli("check")
    assert code != 0 and err.startswith("error:")


def test_train_evaluate_predict_cli(tmp_path, run_cli):
    data = make_dataset(tmp_path / "d", shape=(48, 56))
    run = tmp_path / "run"
    args = ["--crop-size", "32", "--crops", "8", "--epochs", "1", "--batch-size", "4", "--quiet"]
    code, out, err = run_cli("train", "--data", data, "--out", run, *args)
    assert code == 0, err
    assert "class weights (none)" in out
    code, out, err = run_cli("evaluate", run, "--data", data, "--out", tmp_path / "ev")
    assert code == 0, err
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert [r["id"] for r in m["per_image"]] == ["s00", "s01"]
    assert "s per slice" in out
    code, out, err = run_cli("predict", run, data / "test" / "images", "--out", tmp_path / "pr")
    assert code == 0, err
    # predict and evaluate agree on the same image
    np.testing.assert_array_equal(
        read_mask(tmp_path / "pr" / "s00.png"),
        read_mask(tmp_path / "ev" / "predictions" / "s00.png"),
    )
    code, out, err = run_cli(
        "predict", run, data / "test" / "images", "--out", tmp_path / "pt", "--runtime", "torch"
    )
    assert code == 0, err
    same = read_mask(tmp_path / "pt" / "s00.png") == read_mask(tmp_path / "pr" / "s00.png")
    assert same.mean() >= 0.99  # auto (a compiled runtime where installed) vs eager PyTorch
    code, out, err = run_cli(
        "predict", run, data / "test" / "images", "--out", tmp_path / "p3", "--runtime", "fast"
    )
    assert code == 1 and err.startswith("error: unknown runtime") and err.count("\n") == 1
    assert not (tmp_path / "p3").exists()
    code, out, err = run_cli("predict", run, tmp_path / "missing.png", "--out", tmp_path / "pr2")
    assert code == 1 and "missing.png" in err
    code, out, err = run_cli(
        "evaluate", run, "--data", data, "--out", tmp_path / "ev", "--split", "val"
    )
    assert code == 1 and "--overwrite" in err
    other = make_dataset(tmp_path / "o", shape=(48, 56), classes=("bg", "a", "b"))
    code, out, err = run_cli("evaluate", run, "--data", other, "--out", tmp_path / "ev3")
    assert code == 1 and "classes" in err


@pytest.mark.slow  # long (10-25 s): keeps the default suite within 5 minutes
def test_demo_network_beats_threshold(tmp_path):
    from tomoseg.experiments.demo import run_demo

    res = run_demo(tmp_path / "demo", epochs=3)
    assert res["network"]["iou"] > res["otsu"]["iou"] + 0.1
    for f in (
        "run/curves.png",
        "evaluation/metrics.json",
        "otsu/metrics.json",
        "evaluation/panels",
    ):
        assert (tmp_path / "demo" / f).exists(), f


@pytest.mark.parametrize("arg", ["--help", "version"])
def test_help_and_version(run_cli, arg):
    code, out, _ = run_cli(arg)
    assert code == 0 and out


def test_stack_and_objects_cli(tmp_path, run_cli):
    import tifffile

    data = make_dataset(tmp_path / "d", shape=(48, 56))
    run = tmp_path / "run"
    args = ["--crop-size", "32", "--crops", "8", "--epochs", "1", "--quiet"]
    assert run_cli("train", "--data", data, "--out", run, *args)[0] == 0
    rng = np.random.default_rng(0)
    tifffile.imwrite(
        tmp_path / "stack.tif",
        rng.integers(0, 255, (4, 48, 56), dtype=np.uint8),
        photometric="minisblack",
    )
    code, out, err = run_cli(
        "segment-stack", run, tmp_path / "stack.tif", "--out", tmp_path / "seg"
    )
    assert code == 0, err
    assert "4 slices" in out
    code, out, err = run_cli(
        "segment-stack", run, tmp_path / "stack.tif", "--out", tmp_path / "seg"
    )
    assert code == 0 and "0 computed, 4 already done" in out, out + err
    code, _, err = run_cli(
        "segment-stack",
        run,
        tmp_path / "stack.tif",
        "--out",
        tmp_path / "s2",
        "--voxel-size",
        "1,-2,3",
    )
    assert code == 1 and err.startswith("error:") and len(err.strip().splitlines()) == 1
    code, out, err = run_cli("objects", tmp_path / "seg", "--out", tmp_path / "obj")
    assert code == 0, err
    assert (tmp_path / "obj" / "objects.csv").is_file()
    code, _, err = run_cli(
        "objects", tmp_path / "seg", "--out", tmp_path / "obj2", "--class", "nope"
    )
    assert code == 1 and "nope" in err
    code, _, err = run_cli(
        "objects", tmp_path / "seg", "--out", tmp_path / "obj3", "--connectivity", "5"
    )
    assert code == 1 and "connectivity" in err
