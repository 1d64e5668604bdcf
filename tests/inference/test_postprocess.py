"""Decision and clean-up tuned on validation images."""

from __future__ import annotations

import numpy as np

from tomoseg.inference.postprocess import Decision, clean_labels, read_decision
from tomoseg.inference.tuning import tune_decision


def test_clean_labels_removes_small_objects_and_fills_small_holes():
    lab = np.zeros((20, 20), np.uint8)
    lab[2:8, 2:8] = 1  # 36 px with a 1-px hole
    lab[4, 4] = 0
    lab[15, 15] = 1  # a 1-px speck
    lab[10:12, 10:12] = 2  # another class, left alone
    out = clean_labels(lab, Decision(1, min_size=2, max_hole=1))
    assert out[15, 15] == 0 and out[4, 4] == 1 and (out[10:12, 10:12] == 2).all()
    assert (clean_labels(lab, Decision(1, min_size=1)) == lab).all()  # nothing below 1 px
    assert clean_labels(lab, Decision(1)) is lab


def _case(rng, shift):
    """Probabilities whose argmax over-segments the class by ``shift`` in logit, plus specks."""
    truth = np.zeros((32, 32), np.uint8)
    truth[8:20, 8:20] = 1
    logit = np.where(truth == 1, 1.0, -1.0) + rng.normal(0, 0.3, truth.shape)
    logit += shift
    logit[2, 28] = 4.0  # a speck far from the object
    p1 = 1 / (1 + np.exp(-logit))
    return np.stack([1 - p1, p1]).astype(np.float32), truth


def test_tuning_recovers_an_offset_and_a_speck_removal_and_never_loses():
    rng = np.random.default_rng(0)
    items = [_case(rng, 1.2) for _ in range(3)]
    d, rep = tune_decision(
        items, class_id=1, offsets=[-1.5, -1.0, -0.5, 0.5], min_sizes=[4], max_holes=[]
    )
    assert d.offset < 0 and d.min_size == 4
    assert rep["after"]["iou"] > rep["before"]["iou"]
    # a perfect prediction stays untouched: the identity wins ties
    t = items[0][1]
    perfect = np.stack([(t == 0), (t == 1)]).astype(np.float32)
    d, rep = tune_decision([(perfect, t)], class_id=1)
    assert d.is_identity and rep["after"] == rep["before"]


def test_read_decision(tmp_path):
    import json

    import pytest

    from tomoseg.errors import TomosegError

    assert read_decision(tmp_path) is None
    (tmp_path / "decision.json").write_text(
        json.dumps({"decision": {"class_id": 1, "offset": -0.5, "min_size": 16, "max_hole": 0}})
    )
    assert read_decision(tmp_path) == Decision(1, -0.5, 16, 0)
    (tmp_path / "decision.json").write_text("{}")
    with pytest.raises(TomosegError, match="malformed"):
        read_decision(tmp_path)


def test_annotated_sizes_counts_objects_and_enclosed_holes():
    from tomoseg.data.sources import IGNORE_INDEX
    from tomoseg.inference.tuning import annotated_sizes, size_limits

    t = np.zeros((20, 20), np.int16)
    t[2:8, 2:8] = 1  # 36 px with a 1-px hole -> an object of 35 px
    t[4, 4] = 0
    t[15, 15] = 1  # a 1-px object
    t[16, 16] = 1  # touches it diagonally: one 8-connected object of 2 px
    t[10:14, 10:14] = 1
    t[11:13, 11:13] = IGNORE_INDEX  # unannotated inside an object: not a hole
    objects, holes = annotated_sizes([t, np.zeros_like(t)], 1)
    assert sorted(objects.tolist()) == [2, 12, 35] and holes.tolist() == [1]
    most_size, most_hole = size_limits([t], 1, quantile=0.0)
    assert most_size == 2 and most_hole == 0  # removing < 2 px or filling 0 px only
    assert size_limits([np.zeros_like(t)], 1) == (0.0, float("inf"))


def test_tuning_never_removes_object_sizes_the_annotations_contain():
    rng = np.random.default_rng(0)
    items = [_case(rng, 0.0) for _ in range(3)]
    # on these validation images removing the 1-px speck helps ...
    d, _ = tune_decision(items, class_id=1, offsets=[], min_sizes=[4], max_holes=[])
    assert d.min_size == 4
    # ... but where the annotations hold many 2-px objects a 4-px minimum is not a candidate
    small = np.zeros((32, 32), np.int16)
    small[::4, ::4] = 1
    small[1::4, ::4] = 1
    d, rep = tune_decision(
        items, class_id=1, offsets=[], min_sizes=[4], max_holes=[], annotations=[small]
    )
    assert d.min_size == 0 and rep["size_limits"]["min_size"] == 2
    assert rep["after"] == rep["before"]
