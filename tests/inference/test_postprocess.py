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
