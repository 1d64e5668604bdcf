"""`tomoseg score` end to end: report files, equality with a reference, and every bad input."""

import csv
import json
import shutil

import numpy as np
import pytest
from conftest import METRICS_JSON_KEYS, shared_dataset, write_png
from PIL import Image
from reference import ref_scores

from tomoseg.io.images import list_images, read_mask


def _masks_dir(tmp_path, name, arrays):
    d = tmp_path / name
    for i, a in arrays.items():
        write_png(d / f"{i}.png", a)
    return d


@pytest.fixture
def pred_truth(tmp_path):
    rng = np.random.default_rng(1)
    truth, pred = {}, {}
    for i in ("a", "b"):
        t = np.zeros((30, 40), np.uint8)
        t[5:15, 8:20] = 1
        t[20:28, 25:38] = 2
        p = t.copy()
        p[rng.random(t.shape) < 0.05] = rng.integers(0, 3)
        truth[i], pred[i] = t, p
    return _masks_dir(tmp_path, "pred", pred), _masks_dir(tmp_path, "truth", truth), truth, pred


def test_score_writes_report_equal_to_reference(tmp_path, run_cli, pred_truth):
    pdir, tdir, truth, pred = pred_truth
    code, out, err = run_cli(
        "score",
        "--pred",
        pdir,
        "--truth",
        tdir,
        "--classes",
        "bg,x,y",
        "--class-of-interest",
        "x",
        "--out",
        tmp_path / "rep",
    )
    assert code == 0, err
    m = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert set(m) == METRICS_JSON_KEYS
    assert (
        m["classes"] == ["bg", "x", "y"]
        and m["class_of_interest"] == "x"
        and m["tolerance_px"] == 2
    )
    for row in m["per_image"]:
        acc, iou, bf1 = ref_scores(truth[row["id"]], pred[row["id"]], 3, 2.0)
        assert row["accuracy"] == pytest.approx(acc, abs=1e-12)
        assert [row["iou"][c] for c in ("bg", "x", "y")] == pytest.approx(list(iou), abs=1e-12)
        assert [row["bf1"][c] for c in ("bg", "x", "y")] == pytest.approx(list(bf1), abs=1e-12)
    assert m["mean"]["iou"]["x"] == pytest.approx(np.mean([r["iou"]["x"] for r in m["per_image"]]))
    rows = list(csv.DictReader((tmp_path / "rep" / "per_image.csv").open()))
    assert [r["id"] for r in rows] == ["a", "b"] and "bf1_x" in rows[0]
    ov = np.asarray(Image.open(tmp_path / "rep" / "overlays" / "a.png"))
    t, p = truth["a"] == 1, pred["a"] == 1
    assert (ov[t & p] == 255).all() and (ov[~t & ~p] == 0).all()
    assert (ov[t & ~p] == [255, 105, 180]).all() and (ov[~t & p] == [0, 200, 0]).all()
    assert (tmp_path / "rep" / "panels" / "a.png").is_file()
    assert "mean over images" in out and "pooled" in out


def test_nan_written_as_null(tmp_path, run_cli):
    z = np.zeros((10, 10), np.uint8)
    pdir = _masks_dir(tmp_path, "p", {"a": z})
    tdir = _masks_dir(tmp_path, "t", {"a": z})
    code, _, err = run_cli(
        "score", "--pred", pdir, "--truth", tdir, "--classes", "bg,fg", "--out", tmp_path / "r"
    )
    assert code == 0, err
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["per_image"][0]["bf1"]["fg"] is None and m["pooled_iou"]["fg"] is None


def _expect_error(run_cli, args, pattern):
    code, out, err = run_cli(*args)
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in err
    assert pattern in lines[0], lines[0]


def test_bad_inputs_give_one_error_line(tmp_path, run_cli, pred_truth):
    pdir, tdir, _, _ = pred_truth
    out = tmp_path / "rep"
    base = ["score", "--pred", pdir, "--truth", tdir, "--out", out]
    _expect_error(
        run_cli, ["score", "--pred", tmp_path / "nope", "--truth", tdir, "--out", out], "nope"
    )
    _expect_error(run_cli, [*base, "--tolerance", "-1"], "tolerance")
    _expect_error(
        run_cli, [*base, "--classes", "bg,x,y", "--class-of-interest", "z"], "unknown class 'z'"
    )
    _expect_error(run_cli, [*base, "--classes", "bg,x"], "outside 0..1")
    (tmp_path / "empty").mkdir()
    _expect_error(
        run_cli, ["score", "--pred", tmp_path / "empty", "--truth", tdir, "--out", out], "no images"
    )
    # prediction without truth and the reverse
    extra = tmp_path / "pred2"
    shutil.copytree(pdir, extra)
    write_png(extra / "c.png", np.zeros((30, 40), np.uint8))
    _expect_error(run_cli, ["score", "--pred", extra, "--truth", tdir, "--out", out], "c.png")
    _expect_error(run_cli, ["score", "--pred", tdir, "--truth", extra, "--out", out], "c.png")
    # shapes differ, RGB mask, float mask, not an image
    bad = tmp_path / "bad"
    shutil.copytree(pdir, bad)
    write_png(bad / "a.png", np.zeros((30, 41), np.uint8))
    _expect_error(run_cli, ["score", "--pred", bad, "--truth", tdir, "--out", out], "a.png")
    write_png(bad / "a.png", np.zeros((30, 40, 3), np.uint8))
    _expect_error(run_cli, ["score", "--pred", bad, "--truth", tdir, "--out", out], "RGB")
    (bad / "a.png").unlink()
    import tifffile

    tifffile.imwrite(bad / "a.tif", np.zeros((30, 40), np.float32))
    _expect_error(run_cli, ["score", "--pred", bad, "--truth", tdir, "--out", out], "integer")
    (bad / "a.tif").unlink()
    (bad / "a.png").write_bytes(b"not a png")
    _expect_error(
        run_cli, ["score", "--pred", bad, "--truth", tdir, "--out", out], "not a readable image"
    )
    # output already holding results: refused, and the earlier report is untouched
    assert run_cli(*base, "--classes", "bg,x,y")[0] == 0
    before = (out / "metrics.json").read_bytes()
    _expect_error(run_cli, [*base, "--classes", "bg,x,y"], "--overwrite")
    assert (out / "metrics.json").read_bytes() == before
    assert run_cli(*base, "--classes", "bg,x,y", "--overwrite")[0] == 0
    # output folder not writable (a file stands where the folder must go)
    (tmp_path / "afile").write_text("")
    _expect_error(
        run_cli,
        ["score", "--pred", pdir, "--truth", tdir, "--out", tmp_path / "afile" / "r"],
        "not writable",
    )


@pytest.mark.realdata
def test_real_data_self_and_reference(tmp_path, run_cli):
    data = shared_dataset("xct-dendrite")
    tdir = data / "test" / "masks"
    code, _, err = run_cli("score", "--pred", tdir, "--truth", tdir, "--out", tmp_path / "self")
    assert code == 0, err
    m = json.loads((tmp_path / "self" / "metrics.json").read_text())
    assert m["classes"] == ["background", "dendrite"]  # found in dataset.json above the masks
    for row in m["per_image"]:
        assert row["accuracy"] == 1 and all(v == 1 for v in row["iou"].values())
        assert all(v == 1 for v in row["bf1"].values())
    # another prediction: a threshold of the image, against the KD-tree reference to 1e-9
    from skimage.filters import threshold_otsu

    from tomoseg.io.images import read_image

    pdir = tmp_path / "otsu"
    preds = {}
    for i, path in list_images(data / "test" / "images").items():
        img = read_image(path)
        preds[i] = (img > threshold_otsu(img)).astype(np.uint8)
        write_png(pdir / f"{i}.png", preds[i])
    code, _, err = run_cli("score", "--pred", pdir, "--truth", tdir, "--out", tmp_path / "otsu_rep")
    assert code == 0, err
    m = json.loads((tmp_path / "otsu_rep" / "metrics.json").read_text())
    for row in m["per_image"]:
        truth = read_mask(tdir / f"{row['id']}.png")
        acc, iou, bf1 = ref_scores(truth, preds[row["id"]], 2, 2.0, brute=False)
        assert abs(row["accuracy"] - acc) < 1e-9
        for j, c in enumerate(m["classes"]):
            assert abs(row["iou"][c] - iou[j]) < 1e-9 and abs(row["bf1"][c] - bf1[j]) < 1e-9
