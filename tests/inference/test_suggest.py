"""Slices to label next: per-slice uncertainty ranked with a spread over z (API and CLI)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tomoseg
from tomoseg.errors import TomosegError
from tomoseg.inference.predictor import Predictor, uncertainty_of
from tomoseg.inference.suggest import rank_slices, suggest


def test_rank_spreads_the_picks_over_z():
    scores = np.zeros(20)
    scores[5:9] = [0.9, 0.95, 0.92, 0.91]  # one uncertain cluster
    scores[15] = 0.5
    assert rank_slices(scores, 1) == [6]
    picks = rank_slices(scores, 2)  # spacing 20 // 4 = 5: the cluster gives one
    assert picks == [6, 15]
    assert rank_slices(scores, 2, spacing=1) == [6, 7]  # no spread: the cluster's top two
    assert len(set(rank_slices(scores, 20))) == 20  # spacing relaxed to give all of them
    with pytest.raises(TomosegError, match="n=0"):
        rank_slices(scores, 0)
    with pytest.raises(TomosegError, match="spacing=0"):
        rank_slices(scores, 2, spacing=0)


@pytest.fixture
def tiny(small_run) -> tuple[Path, np.ndarray]:
    data, run = small_run
    files = sorted((data / "test" / "images").iterdir())
    return run, np.stack([np.asarray(Image.open(f)) for f in files])


def test_suggest_scores_are_the_mean_uncertainty(tiny):
    run, volume = tiny
    got = suggest(run, volume, n=2)
    p = Predictor.from_run(run)
    want = [float(uncertainty_of(p.predict_proba(s)).mean()) for s in volume]
    np.testing.assert_allclose(got["scores"], want, rtol=1e-6)
    assert [s["index"] for s in got["slices"]] == rank_slices(want, 2)


def test_suggest_command(tiny, tmp_path, run_cli):
    run, volume = tiny
    stack = tmp_path / "stack.tif"
    tomoseg_tiff = pytest.importorskip("tifffile")
    tomoseg_tiff.imwrite(stack, volume)
    code, out, err = run_cli("suggest", run, stack, "--n", "3")
    assert code == 0, err
    assert out.count("uncertainty") == 4 and " 1. slice " in out
    code, _, err = run_cli("suggest", run, stack, "--n", "0")
    assert code == 1 and err.startswith("error: --n 0") and err.count("\n") == 1


def test_segment_stack_writes_uncertainty_and_suggest_reads_it(tiny, tmp_path, run_cli):
    import json
    import threading

    import zarr

    from tomoseg.utils.progress import Cancelled

    run, volume = tiny
    out = tmp_path / "seg"
    stop = threading.Event()

    def cancel_after_two(event):
        if event.kind == "advance" and event.done >= 2:
            stop.set()

    with pytest.raises(Cancelled):  # a cancelled job resumes to the same volumes
        tomoseg.segment_stack(run, volume, out, uncertainty=True, progress=cancel_after_two,
                              cancel=stop)  # fmt: skip
    info = tomoseg.segment_stack(run, volume, out, uncertainty=True)
    # the slices done before the cancel are kept (how many were in flight depends on the load)
    assert info["skipped"] >= 2 and info["computed"] + info["skipped"] == len(volume)
    p = Predictor.from_run(run)
    unc = zarr.open_array(str(out / "uncertainty.zarr" / "0"), mode="r")
    assert unc.dtype == np.float32 and unc.shape == volume.shape
    for z in range(len(volume)):
        np.testing.assert_allclose(unc[z], p.predict_uncertainty(volume[z]), atol=1e-5)
    rec = json.loads((out / "stack.json").read_text())
    want = [float(uncertainty_of(p.predict_proba(s)).mean()) for s in volume]
    np.testing.assert_allclose(rec["uncertainty"]["scores"], want, atol=1e-5)
    got = suggest(run, out, n=2)  # the stored scores, no inference
    assert [s["index"] for s in got["slices"]] == rank_slices(want, 2)
    code, _, err = run_cli("segment-stack", run, out, "--out", tmp_path / "x", "--uncertainty",
                           "--io-workers", "2")  # fmt: skip
    assert code == 1 and err.startswith("error: --uncertainty") and err.count("\n") == 1
