"""The quick-look pictures ``predict`` and ``segment-stack`` write beside their results."""

import numpy as np
import pytest
from PIL import Image

import tomoseg
from tomoseg.inference.predict import QUICKLOOK, predict_paths
from tomoseg.io.images import list_images, read_image
from tomoseg.reporting.quicklook import QUICKLOOK_NAME, class_colour, spread


def _has_colour(path, rgb, tol=60):
    a = np.asarray(Image.open(path).convert("RGB")).astype(int)
    hue = a - a.mean(-1, keepdims=True)  # the class colour over grey keeps its hue
    want = np.array(rgb) - np.mean(rgb)
    return (np.abs(hue - want * 0.6).max(-1) < tol).sum()


def test_predict_writes_a_quicklook_outside_the_mask_folder(small_run, tmp_path, run_cli):
    data, run = small_run
    out = tmp_path / "pred"
    code, stdout, err = run_cli(
        "predict", run, data / "test" / "images", "--out", out, "--device", "cpu"
    )
    assert code == 0, err
    picture = out / QUICKLOOK
    assert picture.is_file() and f"quick look: {picture}" in stdout
    assert set(list_images(out)) == set(list_images(data / "test" / "images"))  # masks only
    assert _has_colour(picture, class_colour(1)) > 0  # labels drawn over the images


def test_segment_stack_writes_a_quicklook_of_the_finished_stack(small_run, tmp_path):
    data, run = small_run
    vol = np.stack([read_image(p) for p in list_images(data / "test" / "images").values()])[:3]
    for fmt in ("zarr", "tiff"):
        out = tmp_path / fmt
        summary = tomoseg.segment_stack(run, vol, out, format=fmt, settings=None)
        assert summary["quicklook"] == str(out / QUICKLOOK_NAME)
        assert (out / QUICKLOOK_NAME).is_file()


def test_a_failing_quicklook_only_warns(small_run, tmp_path, monkeypatch):
    import tomoseg.reporting.quicklook as ql

    data, run = small_run

    def broken(*a, **k):
        raise OSError("no room for pictures")

    monkeypatch.setattr(ql, "write_quicklook", broken)
    with pytest.warns(UserWarning, match="no quick-look picture .*no room for pictures"):
        paths = predict_paths(run, [data / "test" / "images"], tmp_path / "p")
    assert all(p.is_file() for p in paths)


def test_spread_picks_slices_across_the_stack():
    assert spread(100, 3) == [25, 50, 75]
    assert spread(2, 3) == [0, 1]
    assert spread(6, 4) == [1, 2, 3, 4]
