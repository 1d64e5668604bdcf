"""Metrics against independent brute-force references, on random masks and edge cases."""

import math

import numpy as np
import pytest
from conftest import METRICS_JSON_KEYS
from reference import ref_boundary, ref_scores
from scipy import ndimage as ndi

from tomoseg.errors import TomosegError
from tomoseg.metrics.segmentation import (
    ScoreSummary,
    accuracy_from_cm,
    bf1_binary,
    boundary,
    confusion_matrix,
    iou_from_cm,
    score_image,
    within_tolerance,
)

TOLERANCES = [0, 1, 1.5, 2, 5, 7.5]  # 7.5 exercises the distance-transform path


def random_labels(rng: np.random.Generator, k: int) -> tuple[np.ndarray, np.ndarray]:
    """A random truth and a related prediction: smooth blobs, noise, shifts, or unrelated."""
    h, w = rng.integers(4, 40, size=2)
    field = ndi.gaussian_filter(rng.random((k, h, w)), sigma=(0, *rng.uniform(0.5, 3, 2)))
    truth = field.argmax(0).astype(np.uint8)
    mode = rng.integers(0, 4)
    if mode == 0:  # noisy copy
        pred = truth.copy()
        flip = rng.random((h, w)) < rng.uniform(0, 0.3)
        pred[flip] = rng.integers(0, k, flip.sum())
    elif mode == 1:  # shifted copy
        pred = np.roll(truth, rng.integers(-3, 4, 2), axis=(0, 1))
    elif mode == 2:  # unrelated
        pred = rng.integers(0, k, (h, w)).astype(np.uint8)
    else:  # one class missing in the prediction or truth
        pred = truth.copy()
        pred[pred == rng.integers(0, k)] = 0
        if rng.random() < 0.5:
            truth, pred = pred, truth
    return truth, pred


@pytest.mark.parametrize("k", [2, 3])
def test_random_masks_match_bruteforce(k):
    rng = np.random.default_rng(k)
    for _ in range(150):
        truth, pred = random_labels(rng, k)
        tol = TOLERANCES[rng.integers(len(TOLERANCES))]
        got = score_image(truth, pred, k, tolerance=tol)
        acc, iou, bf1 = ref_scores(truth, pred, k, tol)
        assert got.accuracy == pytest.approx(acc, abs=1e-12)
        np.testing.assert_allclose(got.iou, iou, atol=1e-12, equal_nan=True)
        np.testing.assert_allclose(got.bf1, bf1, atol=1e-12, equal_nan=True)


def test_boundary_matches_reference_and_frame_rule():
    rng = np.random.default_rng(0)
    for _ in range(50):
        m = rng.random(rng.integers(3, 30, 2)) < rng.uniform(0.2, 0.9)
        np.testing.assert_array_equal(boundary(m), ref_boundary(m))
    full = np.ones((5, 6), bool)
    b = boundary(full)
    assert b[0].all() and b[-1].all() and b[:, 0].all() and b[:, -1].all()
    assert not b[1:-1, 1:-1].any()


def test_within_tolerance_is_strict_distance():
    dst = np.zeros((21, 21), bool)
    dst[10, 10] = True
    d = np.hypot(*np.mgrid[-10:11, -10:11])
    for tol in (0, 1, 2, 2.5, 5, 7.5):
        np.testing.assert_array_equal(within_tolerance(dst, tol), d < tol)


def test_edge_cases():
    z = np.zeros((8, 8), np.uint8)
    one = z.copy()
    one[3, 4] = 1
    full = np.ones_like(z)
    # identical masks: perfect at any positive tolerance
    for m in (one, full):
        s = score_image(m, m, 2, tolerance=2)
        assert s.accuracy == 1 and s.iou[1] == 1 and s.bf1[1] == 1
    # tolerance 0 matches nothing, even identical boundaries
    assert bf1_binary(one.astype(bool), one.astype(bool), 0) == 0
    assert bf1_binary(one.astype(bool), one.astype(bool), 1) == 1
    # class absent from truth: NaN BF1; absent from both: NaN IoU; predicted only: IoU 0
    s = score_image(z, z, 2)
    assert math.isnan(s.bf1[1]) and math.isnan(s.iou[1]) and s.iou[0] == 1
    s = score_image(z, one, 2)
    assert math.isnan(s.bf1[1]) and s.iou[1] == 0
    # in truth, not predicted: 0
    s = score_image(one, z, 2)
    assert s.bf1[1] == 0 and s.iou[1] == 0
    # one pixel off by one: matched at tolerance 2 (distance 1 < 2), not at 1
    shifted = np.roll(one, 1, axis=1)
    assert bf1_binary(one == 1, shifted == 1, 2) == 1
    assert bf1_binary(one == 1, shifted == 1, 1) == 0
    # diagonal neighbour at distance sqrt(2): matched at 1.5 and 2, not at 1
    diag = np.roll(one, (1, 1), axis=(0, 1))
    assert bf1_binary(one == 1, diag == 1, 1.5) == 1
    assert bf1_binary(one == 1, diag == 1, 1) == 0
    # object touching the frame: the frame pixels are boundary
    edge = z.copy()
    edge[:, :3] = 1
    assert boundary(edge == 1)[:, 0].all()


def test_bad_inputs():
    a = np.zeros((4, 4), np.uint8)
    with pytest.raises(TomosegError, match="tolerance"):
        score_image(a, a, 2, tolerance=-1)
    with pytest.raises(TomosegError, match="shape"):
        score_image(a, np.zeros((4, 5), np.uint8), 2)
    with pytest.raises(TomosegError, match="outside"):
        score_image(a, a + 2, 2)
    with pytest.raises(TomosegError, match="integer"):
        score_image(a, a.astype(float), 2)


def test_confusion_and_aggregation():
    t = np.array([[0, 0, 1], [1, 1, 2]], np.uint8)
    p = np.array([[0, 1, 1], [1, 2, 2]], np.uint8)
    cm = confusion_matrix(t, p, 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 2, 1], [0, 0, 1]])
    assert accuracy_from_cm(cm) == pytest.approx(4 / 6)
    np.testing.assert_allclose(iou_from_cm(cm), [1 / 2, 2 / 4, 1 / 2])
    # mean over images differs from pooled IoU, and both follow their definitions
    a = score_image(t, p, 3, image_id="a")
    b = score_image(t, t, 3, image_id="b")
    summ = ScoreSummary(["bg", "x", "y"], "y", 2.0, [a, b])
    np.testing.assert_allclose(summ.mean_iou, (a.iou + b.iou) / 2)
    np.testing.assert_allclose(summ.pooled_iou, iou_from_cm(a.cm + b.cm))
    d = summ.to_dict()
    assert set(d) == METRICS_JSON_KEYS
    assert d["per_image"][1]["iou"]["x"] == 1.0
    assert set(d["per_image"][0]) == {"id", "accuracy", "iou", "bf1"}
