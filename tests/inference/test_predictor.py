"""The Predictor: frozen settings, an immutable loaded run shared safely, a picklable spec;
evaluate through it on partially labelled masks; progress and cancel of predict / evaluate."""

from __future__ import annotations

import json
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_TRAIN, make_dataset
from PIL import Image

import tomoseg
from tomoseg.errors import TomosegError
from tomoseg.inference.evaluate import evaluate_run
from tomoseg.inference.predict import predict_paths
from tomoseg.inference.predictor import InferenceSettings, Predictor, PredictorSpec
from tomoseg.utils.progress import Cancelled

SHAPE = (40, 48)


@pytest.fixture(scope="module")
def tiny(one_thread, tmp_path_factory) -> tuple[Path, Path]:
    """A dataset and a run trained on it (its decision tuned on validation)."""
    root = tmp_path_factory.mktemp("predictor")
    data = make_dataset(root / "data", shape=SHAPE, n={"train": 3, "val": 1, "test": 3})
    run = tomoseg.train(data, root / "run", **{**TINY_TRAIN, "epochs": 2})
    return data, run.path


def _forced(run: Path, tmp: Path) -> Path:
    """A copy of the run whose decision.json labels every pixel the class of interest."""
    import shutil

    copy = tmp / "forced"
    shutil.copytree(run, copy)
    epoch = json.loads((run / "decision.json").read_text()).get("epoch")
    rec = {"decision": {"class_id": 1, "offset": 1e4, "min_size": 0, "max_hole": 0}}
    (copy / "decision.json").write_text(json.dumps({**rec, "epoch": epoch}))
    return copy


def _images(data: Path, split: str = "test") -> list[np.ndarray]:
    return [np.asarray(Image.open(f)) for f in sorted((data / split / "images").iterdir())]


def test_two_predictors_on_one_run_keep_their_own_settings(tiny, tmp_path):
    data, run = tiny
    forced = _forced(run, tmp_path)
    images = _images(data)
    a = Predictor.from_run(forced, device="cpu")  # the decision: everything class 1
    b = a.with_settings(postprocess=False, tta="flips")  # shares a's loaded run
    assert b.run is a.run and a.settings.postprocess and not b.settings.postprocess
    ref_b = [
        Predictor.from_run(forced, device="cpu", postprocess=False, tta="flips").predict(im)
        for im in images
    ]
    for im, rb in zip(images, ref_b, strict=True):  # interleaved: neither changes the other
        assert (a.predict(im) == 1).all()
        np.testing.assert_array_equal(b.predict(im), rb)
        assert (a.predict(im) == 1).all()
    assert not all((r == 1).all() for r in ref_b)
    assert a.tta == ("identity",) and b.tta == ("identity", "flip_y", "flip_x", "rot180")
    assert a.record()["decision"]["offset"] == 1e4 and b.record()["decision"] is None
    with pytest.raises(AttributeError):  # the loaded run cannot be reconfigured
        a.run.classes = ["x"]  # type: ignore[misc]
    with pytest.raises(Exception):  # noqa: B017 - frozen dataclass
        a.settings.tta = "all"  # type: ignore[misc]


def test_settings_are_checked_at_construction():
    for bad, match in (
        ({"weights": "worst"}, "weights: must be"),
        ({"nonfinite": "zero"}, "nonfinite"),
        ({"tta": "spin"}, "spin"),
        ({"tile_size": -1}, "tile_size"),
        ({"tile_batch": 0}, "tile_batch"),
        ({"overlap": 1.5}, "overlap"),
    ):
        with pytest.raises(TomosegError, match=match):
            InferenceSettings(**bad)
    assert InferenceSettings(tta="flips").tta == ("identity", "flip_y", "flip_x", "rot180")


def test_spec_rebuilds_the_same_predictor_in_another_process(tiny):
    data, run = tiny
    p = Predictor.from_run(run, device="cpu", tta="flips", tile_size=32)
    spec = pickle.loads(pickle.dumps(p.spec))
    assert isinstance(spec, PredictorSpec) and spec.settings == p.settings
    q = spec.build()
    im = _images(data)[0]
    np.testing.assert_array_equal(q.predict(im), p.predict(im))
    with pytest.raises(TomosegError, match="device"):
        p.with_settings(device="gpu")


def test_predict_volume_takes_any_sliceable_volume(tiny):
    data, run = tiny
    p = Predictor.from_run(run, device="cpu")
    vol = np.stack(_images(data))
    ref = np.stack([p.predict(im) for im in vol])
    np.testing.assert_array_equal(p.predict_volume(vol), ref)
    with pytest.raises(TomosegError, match=r"\(Z, H, W\)"):
        p.predict_volume(vol[0])


def test_evaluate_scores_partially_labelled_test_masks(tiny, tmp_path):
    """Unannotated pixels (the dataset's ignore label) count for nothing in both blocks, with
    and without the tuned decision (it used to fail on the block without it)."""
    import shutil

    data, run = tiny
    part = tmp_path / "partial"
    shutil.copytree(data, part)
    spec = json.loads((part / "dataset.json").read_text())
    (part / "dataset.json").write_text(json.dumps({**spec, "ignore_label": 255}))
    for f in sorted((part / "test" / "masks").iterdir()):
        m = np.asarray(Image.open(f)).copy()
        m[:, SHAPE[1] // 2 :] = 255  # the right half unannotated
        Image.fromarray(m).save(f)
    forced = _forced(run, tmp_path)
    summary, _ = evaluate_run(
        forced, part, tmp_path / "e", settings=InferenceSettings(device="cpu")
    )
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert "without_postprocess" in metrics
    # the decision labels everything class 1: its accuracy is the annotated class-1 share
    masks = [np.asarray(Image.open(f)) for f in sorted((part / "test" / "masks").iterdir())]
    want = np.mean([(m[m != 255] == 1).mean() for m in masks])
    got = np.mean([im.accuracy for im in summary.images])
    assert got == pytest.approx(want)
    plain = np.mean([im.accuracy for im in summary.without_postprocess.images])
    assert 0 < plain <= 1 and plain != pytest.approx(want)


def test_evaluate_cancelled_midway_then_rerun_equals_uninterrupted(tiny, tmp_path):
    data, run = tiny
    settings = InferenceSettings(device="cpu")
    evaluate_run(run, data, tmp_path / "ref", settings=settings)
    stop, events = threading.Event(), []

    def progress(e):
        events.append(e)
        if e.kind == "advance" and e.done >= 1:
            stop.set()

    with pytest.raises(Cancelled, match=r"evaluate cancelled after 1/3 images"):
        evaluate_run(run, data, tmp_path / "e", settings=settings, progress=progress, cancel=stop)
    assert not (tmp_path / "e" / "metrics.json").exists()  # no partial report
    evaluate_run(run, data, tmp_path / "e", settings=settings)
    ref = json.loads((tmp_path / "ref" / "metrics.json").read_text())
    got = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert got["mean"] == ref["mean"] and got["per_image"] == ref["per_image"]
    assert [e.kind for e in events][:2] == ["start", "advance"]


def test_predict_reports_each_image_and_stops_on_cancel(tiny, tmp_path):
    data, run = tiny
    folder = data / "test" / "images"
    events: list = []
    written = predict_paths(
        run,
        [folder],
        tmp_path / "p",
        settings=InferenceSettings(device="cpu"),
        progress=events.append,
    )
    advances = [e for e in events if e.kind == "advance"]
    assert [e.done for e in advances] == [1, 2, 3] and all(e.total == 3 for e in advances)
    assert advances[-1].eta == 0 and events[-1].kind == "end" and len(written) == 3
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled, match="predict cancelled after 0/3 images"):
        predict_paths(
            run, [folder], tmp_path / "q", settings=InferenceSettings(device="cpu"), cancel=stop
        )
    assert not list((tmp_path / "q").glob("*.png"))
