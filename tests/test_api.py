"""The Python API: the same results as the command line on the same run, arrays in and out,
keyword-only options, ValueError subclasses."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import make_dataset
from PIL import Image

import tomoseg
from tomoseg.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {
    "width": 4,
    "depth": 3,
    "crop_size": 32,
    "crops": 16,
    "batch_size": 8,
    "epochs": 2,
    "device": "cpu",
}


@pytest.fixture(scope="module")
def api_run(one_thread, tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    data = make_dataset(root / "data", shape=(48, 56))
    run = tomoseg.train(data, root / "run", **TINY)
    return data, run


def test_train_returns_a_run_with_metrics(api_run):
    data, run = api_run
    assert isinstance(run, tomoseg.Run) and (run.path / "best.safetensors").is_file()
    assert [r["epoch"] for r in run.metrics] == [1.0, 2.0]
    assert "val_iou_fg" in run.metrics[-1]


def test_predictor_equals_cli_predict_and_score_equals_cli_score(api_run, tmp_path, capsys):
    data, run = api_run
    p = tomoseg.Predictor.from_run(run.path, device="cpu")
    assert p.classes == ["background", "fg"] and p.class_of_interest == "fg"
    images = sorted((data / "test" / "images").iterdir())
    rc = main(
        [
            "predict",
            str(run.path),
            str(data / "test" / "images"),
            "--out",
            str(tmp_path / "cli"),
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    for f in images:
        img = np.asarray(Image.open(f))
        labels = p.predict(img)
        assert labels.shape == img.shape and labels.dtype == np.uint8
        np.testing.assert_array_equal(
            labels, np.asarray(Image.open(tmp_path / "cli" / f"{f.stem}.png"))
        )
        prob = p.predict_proba(img)
        assert prob.shape == (2, *img.shape) and prob.dtype == np.float32
        np.testing.assert_allclose(prob.sum(0), 1, atol=1e-5)
        np.testing.assert_array_equal(prob.argmax(0), labels)
    # the API's folder scoring and the CLI's write the same metrics.json
    rc = main(
        [
            "score",
            "--pred",
            str(tmp_path / "cli"),
            "--truth",
            str(data / "test" / "masks"),
            "--out",
            str(tmp_path / "s1"),
        ]
    )
    assert rc == 0
    api = tomoseg.score_folders(tmp_path / "cli", data / "test" / "masks", tmp_path / "s2")
    cli = json.loads((tmp_path / "s1" / "metrics.json").read_text())
    assert json.loads((tmp_path / "s2" / "metrics.json").read_text()) == cli
    assert api["mean"]["accuracy"] == pytest.approx(cli["mean"]["accuracy"])
    # the array scorer gives each image's numbers of the folder report
    for entry in cli["per_image"]:
        t = np.asarray(Image.open(data / "test" / "masks" / f"{entry['id']}.png"))
        q = np.asarray(Image.open(tmp_path / "cli" / f"{entry['id']}.png"))
        one = tomoseg.score(t, q, classes=["background", "fg"])
        assert one["per_image"][0]["iou"] == pytest.approx(entry["iou"], nan_ok=True)
        assert one["per_image"][0]["bf1"] == pytest.approx(entry["bf1"], nan_ok=True)


def test_segment_stack_api_equals_cli(api_run, tmp_path):
    data, run = api_run
    stack = tmp_path / "stack"
    stack.mkdir()
    for i, f in enumerate(sorted((data / "train" / "images").iterdir())):
        Image.open(f).save(stack / f"z{i:04d}.png")
    s = tomoseg.segment_stack(run.path, stack, tmp_path / "api", device="cpu")
    assert s["slices"] == 3
    assert (
        main(
            [
                "segment-stack",
                str(run.path),
                str(stack),
                "--out",
                str(tmp_path / "cli"),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    import zarr

    a = zarr.open_array(str(tmp_path / "api" / "labels.zarr" / "0"), mode="r")[:]
    b = zarr.open_array(str(tmp_path / "cli" / "labels.zarr" / "0"), mode="r")[:]
    np.testing.assert_array_equal(a, b)
    p = tomoseg.Predictor.from_run(run.path, device="cpu")
    np.testing.assert_array_equal(a[0], p.predict(np.asarray(Image.open(stack / "z0000.png"))))


def test_errors_are_value_errors_naming_the_parameter(api_run, tmp_path):
    data, run = api_run
    with pytest.raises(ValueError, match="weights"):
        tomoseg.Predictor.from_run(run.path, weights="worst")
    p = tomoseg.Predictor.from_run(run.path, device="cpu")
    with pytest.raises(tomoseg.TomosegError, match=r"image must be a 2D \(H, W\) array"):
        p.predict(np.zeros((2, 3, 8, 8)))
    with pytest.raises(ValueError, match="strings|integers or floats"):
        p.predict(np.array([["a"]]))
    with pytest.raises(ValueError, match="truth must be a 2D integer array"):
        tomoseg.score(np.zeros((4, 4)), np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="labels must be a \\(Z, Y, X\\) array"):
        tomoseg.measure_objects(np.zeros((4, 4), np.uint8))
    with pytest.raises(TypeError):
        tomoseg.score(
            np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8), ["a", "b"]
        )  # keyword-only
    with pytest.raises(ValueError, match="epochs"):
        tomoseg.train(data, tmp_path / "bad", epochs=0)
    assert not (tmp_path / "bad").exists()


def test_score_arrays_takes_ids_of_both_and_perfect_is_one():
    t = np.zeros((16, 16), np.uint8)
    t[4:10, 4:10] = 1
    r = tomoseg.score(t, t)
    assert r["classes"] == ["0", "1"] and r["mean"]["iou"] == {"0": 1.0, "1": 1.0}
    assert r["mean"]["bf1"]["1"] == 1.0
    q = t.copy()
    q[0, 0] = 2  # an id the truth lacks still counts: K = 3
    r = tomoseg.score(t, q)
    assert r["classes"] == ["0", "1", "2"] and r["mean"]["iou"]["2"] == 0.0


def test_measure_objects_matches_regionprops_names_and_values():
    from skimage.measure import label, regionprops_table

    rng = np.random.default_rng(0)
    v = (rng.random((12, 20, 24)) > 0.8).astype(np.uint8)
    t = tomoseg.measure_objects(v, class_id=1, spacing=(2.0, 1.0, 0.5), connectivity=26)
    ref = regionprops_table(
        label(v, connectivity=3),
        properties=("label", "num_pixels", "area"),
        spacing=(2.0, 1.0, 0.5),
    )
    assert sorted(t["num_pixels"]) == sorted(ref["num_pixels"])
    np.testing.assert_allclose(sorted(t["area"]), sorted(ref["area"]))
    np.testing.assert_allclose(t["area"], t["num_pixels"] * 1.0)
    for col in (
        "label",
        "centroid-0",
        "centroid-2",
        "bbox-0",
        "bbox-5",
        "axis_major_length",
        "equivalent_diameter_area",
    ):
        assert col in t and len(t[col]) == len(t["label"])
    big = tomoseg.measure_objects(v, min_volume=3)
    assert (big["num_pixels"] >= 3).all() and len(big["label"]) < len(t["label"])
    empty = tomoseg.measure_objects(np.zeros((3, 4, 4), np.uint8))
    assert (
        set(empty) >= {"label", "num_pixels", "area", "centroid-0", "bbox-5"}
        and len(empty["label"]) == 0
    )


README_OUTPUT = re.compile(r"It prints[^\n]*\n\n```\n(.*?)```", re.S)


def _readme_text() -> str:
    return (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _readme_example() -> str:  # noqa: D103
    text = _readme_text()
    section = text.split("## Python API", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.slow
def test_readme_api_example_runs_as_written(tmp_path):
    import subprocess
    import sys

    code = _readme_example()
    assert "tomoseg.train(" in code and "Predictor.from_run" in code
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("validation IoU of soma per epoch: [")
    iou = float(lines[1].removeprefix("IoU of soma on a test slice: "))
    assert iou > 0.6, out.stdout  # a result worth showing (the README prints what it gave)
    found, truth = re.fullmatch(
        r"(\d+) somas found in the test slices; (\d+) in the truth", lines[2]
    ).groups()
    assert abs(int(found) - int(truth)) <= int(truth) // 2, out.stdout
    # the output the README shows is the output of the code it shows (same lines, same form)
    shown = README_OUTPUT.search(_readme_text()).group(1).splitlines()
    assert [ln.split(":")[0] for ln in shown[:2]] == [ln.split(":")[0] for ln in lines[:2]]
