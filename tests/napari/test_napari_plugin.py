"""The napari plugin driven as a user drives it (headless: QT_QPA_PLATFORM=offscreen): the
manifest validates, each widget's button runs its job in a worker and its layers hold the
right content, Cancel stops a job that a rerun completes, errors are one notification line,
and the reader opens each output kind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from conftest import EVENT_DEADLINE, TINY_TRAIN, wait_for
from PIL import Image

pytest.importorskip("napari", reason="napari is not installed (pip install 'tomoseg[napari]')")
pytest.importorskip("pytestqt", reason="pytest-qt is not installed (tomoseg[napari-test])")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import tomoseg  # noqa: E402
from tomoseg.napari import widgets as W  # noqa: E402
from tomoseg.napari.reader import get_reader  # noqa: E402

MANIFEST = Path(tomoseg.__file__).parent / "napari" / "napari.yaml"
WAIT_MS = int(EVENT_DEADLINE * 1000)


@cache
def opengl_works() -> bool:
    """Whether a napari canvas can draw here (probed once, in a child process)."""
    code = (
        "import numpy as np, napari\n"
        "v = napari.Viewer(show=False)\n"
        "v.add_image(np.zeros((2, 4, 4)))\n"
        "v.close()\n"
    )
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=300)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


@pytest.fixture
def viewer(request, qtbot):
    """napari's ``make_napari_viewer`` (a real Qt viewer) where OpenGL works, else napari's
    headless ``ViewerModel`` (the same layers, dims and camera the widgets use; no canvas), on
    machines without OpenGL such as a CI runner without a display."""
    if opengl_works():
        return request.getfixturevalue("make_napari_viewer")()
    from napari.components import ViewerModel

    return ViewerModel()


@pytest.fixture
def tiny(small_run):
    """A run and a (6, 40, 48) volume with its truth."""
    data, run = small_run
    files = sorted((data / "test" / "images").iterdir())
    vol = np.stack([np.asarray(Image.open(f)) for f in files])
    truth = np.stack([np.asarray(Image.open(data / "test" / "masks" / f.name)) for f in files])
    return run, vol, truth


def _finish(qtbot, widget, start):
    """Press a widget's button (``start``) and wait for its worker's finished signal."""
    worker = start()
    assert worker is not None, widget.job.last_error
    # ``running`` turns False in the handler of the worker's ``finished`` signal (connected
    # when the worker was made, so a job that ends at once is not missed)
    qtbot.waitUntil(lambda: not widget.job.running, timeout=WAIT_MS)
    return worker


def _segment(viewer, qtbot, run, vol, **kw):
    viewer.add_image(vol, name="stack")
    w = W.SegmentWidget(viewer)
    w.run.value = str(run)
    w.image.value = viewer.layers["stack"]
    for k, v in kw.items():
        getattr(w, k).value = v
    return w


def test_manifest_validates():
    out = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", str(MANIFEST), "--imports"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(tomoseg.__file__).parents[1])},
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_segment_widget_equals_predict(viewer, qtbot, tiny):
    run, vol, _ = tiny
    w = _segment(viewer, qtbot, run, vol, probability=True)
    _finish(qtbot, w, w.segment)
    assert w.job.last_error is None
    p = tomoseg.Predictor.from_run(run)
    labels = viewer.layers["stack labels"].data
    np.testing.assert_array_equal(labels, np.stack([p.predict(s) for s in vol]))
    unc = viewer.layers["stack uncertainty"].data
    np.testing.assert_allclose(unc[2], p.predict_uncertainty(vol[2]), atol=1e-6)
    prob = viewer.layers[f"stack probability {p.class_of_interest}"].data
    np.testing.assert_allclose(prob[1], p.predict_proba(vol[1])[1], atol=1e-6)
    assert w.job.bar.value == w.job.bar.max == len(vol)


def test_cancel_stops_and_a_rerun_completes(viewer, qtbot, tiny):
    run, vol, _ = tiny
    big = np.concatenate([vol] * 5)  # 30 slices
    w = _segment(viewer, qtbot, run, big)
    seen = []

    def cancel_on_first_slice(event):
        if event.kind == "advance" and not seen:
            seen.append(event.done)
            w.job.cancel_button.native.click()

    w.job._bridge.event.connect(cancel_on_first_slice)
    _finish(qtbot, w, w.segment)
    assert seen and "cancel" in (w.job.last_error or "")
    assert "stack labels" not in viewer.layers
    w.job._bridge.event.disconnect(cancel_on_first_slice)
    _finish(qtbot, w, w.segment)
    p = tomoseg.Predictor.from_run(run)
    np.testing.assert_array_equal(viewer.layers["stack labels"].data[-1], p.predict(big[-1]))


def test_whole_volume_to_disk_is_lazy_cancels_and_resumes(
    viewer, qtbot, tiny, tmp_path, monkeypatch
):
    """The big-stack mode: segment_stack into an OME-Zarr folder, shown lazily; Cancel keeps
    the finished slices, and pressing Segment again computes only the rest."""
    import dask.array as da

    run, vol, _ = tiny
    real = W.segment_to_disk

    def held_after_two(*args, progress=None, cancel=None, **kw):
        def report(event):  # in the worker: after slice 2, wait for the user's Cancel
            progress(event)
            if event.kind == "advance" and event.done == 2:
                wait_for(cancel.is_set, "the Cancel button")

        return real(*args, progress=report, cancel=cancel, **kw)

    monkeypatch.setattr(W, "segment_to_disk", held_after_two)
    big = vol  # 6 slices
    out = tmp_path / "seg"
    w = _segment(viewer, qtbot, run, big, scope=W.SCOPES[2], output=str(out))
    seen = []

    def cancel_after_two(event):
        if event.kind == "advance" and event.done >= 2 and not seen:
            seen.append(event.done)
            w.job.cancel_button.native.click()

    w.job._bridge.event.connect(cancel_after_two)
    _finish(qtbot, w, w.segment)
    w.job._bridge.event.disconnect(cancel_after_two)
    monkeypatch.setattr(W, "segment_to_disk", real)
    assert seen and "cancel" in (w.job.last_error or "")
    assert "stack labels" not in viewer.layers
    finished = len(list((out / "progress").iterdir()))
    assert 2 <= finished < len(big)
    _finish(qtbot, w, w.segment)  # the rerun resumes
    assert w.job.last_error is None, w.job.last_error
    assert f"{len(big) - finished} now, {finished} before" in w.job.status.value
    layer = viewer.layers["stack labels"]
    assert isinstance(layer.data, da.Array)  # read from the OME-Zarr when shown
    p = tomoseg.Predictor.from_run(run)
    np.testing.assert_array_equal(np.asarray(layer.data), np.stack([p.predict(s) for s in big]))
    unc = viewer.layers["stack uncertainty"].data
    np.testing.assert_allclose(np.asarray(unc[3]), p.predict_uncertainty(big[3]), atol=1e-6)
    assert (out / "quicklook.png").is_file()
    assert w.job.bar.value == w.job.bar.max == len(big)


def test_whole_volume_to_disk_default_folder_is_the_jobs_own(tiny):
    run, vol, _ = tiny
    a = W.default_stack_folder("stack", run, None, vol)
    assert a == W.default_stack_folder("stack", run, None, vol.copy())  # the same job
    assert a != W.default_stack_folder("stack", run, "flips", vol)
    assert a != W.default_stack_folder("stack", run, None, vol[::-1])


def test_errors_are_one_notification_line(viewer, qtbot, tiny, tmp_path):
    run, vol, _ = tiny
    w = _segment(viewer, qtbot, tmp_path, vol)  # not a run
    _finish(qtbot, w, w.segment)
    assert w.job.last_error and "\n" not in w.job.last_error
    assert "no trained weights" in w.job.last_error
    viewer.add_image(np.zeros((2, 3, 8, 8), np.float32), name="4d")
    w.image.value = viewer.layers["4d"]
    assert w.segment() is None  # refused before starting
    assert "(2, 3, 8, 8)" in w.job.last_error


def _iou(a, b):
    return float(((a == 1) & (b == 1)).sum() / max(((a == 1) | (b == 1)).sum(), 1))


@pytest.mark.slow  # a fine-tune of 4 epochs and a re-segmentation: about 15 s
def test_fine_tune_on_corrected_slices(viewer, qtbot, tiny, tmp_path):
    run, vol, truth = tiny
    w = _segment(viewer, qtbot, run, vol, uncertainty=False)
    _finish(qtbot, w, w.segment)
    layer = viewer.layers["stack labels"]
    fixed = np.array(layer.data)
    fixed[[1, 4]] = truth[[1, 4]]  # the user corrects two slices
    layer.data = fixed
    f = W.FineTuneWidget(viewer)
    f.image.value, f.corrected.value = viewer.layers["stack"], layer
    f.out.value = str(tmp_path / "child")
    f.train_options = {"time_budget": None, "epochs": 4, "crops": 32}
    _finish(qtbot, f, f.fine_tune)
    assert f.job.last_error is None
    rec = json.loads((tmp_path / "child" / "run.json").read_text())
    assert rec["parent"]["run"] == str(run.resolve())
    new = viewer.layers["stack labels child"].data
    before = np.mean(
        [_iou(np.asarray(layer.metadata["tomoseg_original"])[z], truth[z]) for z in (1, 4)]
    )
    after = np.mean([_iou(new[z], truth[z]) for z in (1, 4)])
    assert after > before, (before, after)


def test_train_from_layers(viewer, qtbot, tiny, tmp_path):
    _, vol, truth = tiny
    viewer.add_image(vol, name="stack")
    notes = np.zeros_like(truth)
    notes[[0, 3]] = truth[[0, 3]] + 1  # napari: 0 = not annotated, class k painted as k + 1
    viewer.add_labels(notes, name="notes")
    t = W.TrainWidget(viewer)
    t.image.value, t.annotations.value = viewer.layers["stack"], viewer.layers["notes"]
    t.classes.value = "background,fg"
    t.out.value = str(tmp_path / "fresh")
    t.train_options = {**TINY_TRAIN, "time_budget": None}
    _finish(qtbot, t, t.train)
    assert t.job.last_error is None
    rec = json.loads((tmp_path / "fresh" / "run.json").read_text())
    assert rec["classes"] == ["background", "fg"]


def test_objects_table_points_and_centring(viewer, qtbot):
    v = np.zeros((6, 20, 20), np.uint8)
    v[1:3, 2:6, 2:6] = 1
    v[4:6, 12:18, 10:16] = 1
    viewer.add_labels(v, name="seg", scale=(2.0, 0.5, 0.5))
    o = W.ObjectsWidget(viewer)
    o.layer.value = viewer.layers["seg"]
    _finish(qtbot, o, o.measure)
    assert o.table.shape[0] == 2
    pts = viewer.layers["seg objects"]
    np.testing.assert_allclose(sorted(pts.data[:, 0]), [1.5, 4.5])
    assert o.table.data[0][1] == 72 and o.table.data[1][1] == 32  # largest first
    o.table.native.selectRow(1)  # the smaller object, label 1: z 1-2 at 2 per slice
    assert viewer.dims.point[0] == pytest.approx(3.0, abs=1.0)
    o.table.native.selectRow(0)  # label 2: z 4-5
    assert viewer.dims.point[0] == pytest.approx(9.0, abs=1.0)


def test_next_slices_rank_and_jump(viewer, qtbot, tiny):
    run, vol, _ = tiny
    viewer.add_image(vol, name="stack")
    n = W.NextSlicesWidget(viewer)
    n.run.value, n.image.value, n.n.value = str(run), viewer.layers["stack"], 2
    _finish(qtbot, n, n.rank)
    from tomoseg.inference.suggest import suggest

    want = [s["index"] for s in suggest(run, vol, n=2)["slices"]]
    assert n.slices == want
    n.go_next()
    assert viewer.dims.current_step[0] == want[0]
    n.go_next()
    assert viewer.dims.current_step[0] == want[1]


def test_reader_opens_stacks_and_stack_outputs(tiny, tmp_path):
    import tifffile

    run, vol, _ = tiny
    tif = tmp_path / "vol.tif"
    tifffile.imwrite(tif, vol)
    ((data, meta, kind),) = get_reader(str(tif))(str(tif))
    assert kind == "image" and data.shape == vol.shape and type(data).__module__.startswith("dask")
    np.testing.assert_array_equal(np.asarray(data), vol)
    out = tmp_path / "seg"
    tomoseg.segment_stack(run, tif, out, voxel_size="2,0.5,0.5")
    ((labels, meta, kind),) = get_reader(str(out))(str(out))
    assert kind == "labels" and meta["scale"] == (2.0, 0.5, 0.5)
    p = tomoseg.Predictor.from_run(run)
    np.testing.assert_array_equal(np.asarray(labels)[0], p.predict(vol[0]))
    (tmp_path / "notes.txt").write_text("x")
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader(str(run))(str(run)) == [(None,)]  # a run folder: read, nothing to show


def test_reader_opens_a_paths_output(tmp_path):
    pytest.importorskip("kimimaro")
    lab = np.zeros((12, 32, 32), np.uint8)
    zz, yy, xx = np.indices(lab.shape)
    lab[((yy - 16) ** 2 + (xx - 16) ** 2 < 9) & (zz < 9)] = 2
    lab[9:12, 10:22, 10:22] = 1
    out = tmp_path / "paths"
    from tomoseg.evaluation.paths import analyze_paths

    analyze_paths(lab, out, class_name=2, soma_class=1, voxel_size=(2, 0.5, 0.5))
    (skel, meta, kind), (nodes, nmeta, nkind) = get_reader(str(out))(str(out))
    assert kind == nkind == "points" and skel.shape[1] == 3
    assert skel[:, 0].max() <= 2 * 11 and (meta["size"] > 0).all()  # physical z: 2 per slice
    assert set(meta["properties"]["object"]) == {1}
    assert sorted(nmeta["face_color"]) == ["cyan", "yellow", "yellow"]
