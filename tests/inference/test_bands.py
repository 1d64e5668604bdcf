"""One slice of any size in bounded memory: a tall slice segmented by bands of rows gets the
labels of the whole-slice path exactly (tiles, blending, the tuned clean-up, non-finite
pixels), through the Predictor, ``predict`` (a TIFF read by bands and written strip by strip)
and the API; a small ``band_rows`` makes several bands of a small slice."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import TINY_TRAIN, make_dataset

import tomoseg
from tomoseg.errors import TomosegError
from tomoseg.inference.bands import CleanStream, plan_bands, tile_starts
from tomoseg.inference.postprocess import Decision, clean_labels
from tomoseg.inference.predict import predict_paths
from tomoseg.inference.predictor import InferenceSettings, Predictor

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny run, and a copy whose decision removes small objects and fills small holes."""
    root = tmp_path_factory.mktemp("bands")
    data = make_dataset(root / "data", n={"train": 2, "val": 1})
    run = tomoseg.train(data, root / "run", **TINY_TRAIN, tune_decision=False).path
    cleaned = root / "cleaned"
    shutil.copytree(run, cleaned)
    epoch = json.loads((run / "run.json").read_text()).get("epoch")
    rec = {"class_id": 1, "offset": 0.5, "min_size": 30, "max_hole": 12}
    (cleaned / "decision.json").write_text(json.dumps({"decision": rec, "epoch": epoch}))
    return run, cleaned


def _slice(h: int = 520, w: int = 90, dtype=np.float32) -> np.ndarray:
    """Blocks of the class (bright) on noise, a NaN patch (outside the field of view)."""
    rng = np.random.default_rng(0)
    blocks = np.kron(rng.random((h // 10, w // 10)) > 0.6, np.ones((10, 10))) * 80
    img = (blocks + rng.integers(0, 40, (h, w))).astype(dtype)
    if np.issubdtype(dtype, np.floating):
        img[200:230, 10:40] = np.nan
    return img


def test_bands_cover_the_slice_once_with_every_covering_tile():
    for h, roi, overlap, rows in ((1000, 64, 0.25, 48), (777, 64, 0.5, 100), (300, 256, 0.25, 1)):
        starts = tile_starts(h, roi, overlap)
        bands = plan_bands(h, roi, overlap, rows)
        assert bands[0].out0 == 0 and bands[-1].out1 == h and len(bands) > 1
        for a, b in zip(bands, bands[1:], strict=False):
            assert a.out1 == b.out0
        for band in bands:  # every tile over its rows lies inside its input rows
            for s in starts:
                if s < band.out1 and s + roi > band.out0:
                    assert band.in0 <= s and s + roi <= band.in1


@pytest.mark.parametrize("which", [0, 1], ids=["plain", "clean-up"])
def test_bands_give_the_whole_slice_labels(runs, which):
    run = runs[which]
    img = _slice()
    whole = Predictor.from_run(run, device="cpu", band_rows=0)
    ref = whole.predict(img)
    assert not whole.banded(*img.shape)
    for rows in (48, 150):
        banded = whole.with_settings(band_rows=rows)
        assert banded.banded(*img.shape)
        np.testing.assert_array_equal(banded.predict(img), ref)
    assert (ref[200:230, 10:40] == 0).all() and 0 < ref.mean() < 1
    if which:  # the clean-up changed something that crosses bands
        plain = Predictor.from_run(runs[0], device="cpu", band_rows=0).predict(img)
        assert (plain != ref).any()


def test_clean_stream_equals_the_whole_slice_clean_up():
    rng = np.random.default_rng(1)
    labels = (rng.random((300, 60)) > 0.55).astype(np.uint8)
    decision = Decision(class_id=1, min_size=9, max_hole=5)
    ref = clean_labels(labels, decision)
    for step in (7, 40, 100):
        stream = CleanStream(decision, 300)
        out = np.full_like(labels, 9)
        for y in range(0, 300, step):
            for y0, y1, lab in stream.push(y, labels[None, y : y + step], None):
                out[y0:y1] = lab[0]
        np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("compression", [None, "zlib"], ids=["memmap", "strips"])
def test_predict_reads_and_writes_a_tall_tiff_by_bands(runs, tmp_path, compression, monkeypatch):
    img = _slice(dtype=np.uint16)
    src = tmp_path / "tall.tif"
    tifffile.imwrite(src, img, compression=compression, rowsperstrip=16)
    settings = InferenceSettings(device="cpu", band_rows=0)
    predict_paths(runs[1], [src], tmp_path / "whole", format="tif", settings=settings)
    import tomoseg.inference.predict as predict_module

    def never(*_a, **_k):
        raise AssertionError("the tall TIFF was read whole")

    monkeypatch.setattr(predict_module, "read_image", never)
    banded = InferenceSettings(device="cpu", band_rows=48)
    predict_paths(runs[1], [src], tmp_path / "bands", format="tif", settings=banded)
    with tifffile.TiffFile(tmp_path / "bands" / "tall.tif") as tf:
        assert len(tf.pages[0].dataoffsets) > 1  # written strip by strip
        got = tf.asarray()
    np.testing.assert_array_equal(got, tifffile.imread(tmp_path / "whole" / "tall.tif"))


def test_band_rows_is_checked():
    with pytest.raises(TomosegError, match="band_rows"):
        InferenceSettings(band_rows=-1)
