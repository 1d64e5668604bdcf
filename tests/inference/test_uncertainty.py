"""Per-pixel uncertainty of the class decision: entropy and margin of the softmax, and the
disagreement of TTA passes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tomoseg.errors import TomosegError
from tomoseg.inference.predictor import Predictor, uncertainty_of


@pytest.fixture
def tiny(small_run) -> tuple[Path, Path]:
    return small_run


def test_entropy_and_margin_by_hand():
    p = np.array([[[1.0, 0.5, 0.7]], [[0.0, 0.5, 0.3]]], np.float32)  # (K=2, 1, 3)
    h = uncertainty_of(p, "entropy")
    assert h.shape == (1, 3) and h.dtype == np.float32
    want = -(0.7 * np.log(0.7) + 0.3 * np.log(0.3)) / np.log(2)
    np.testing.assert_allclose(h[0], [0.0, 1.0, want], atol=1e-5)
    np.testing.assert_allclose(uncertainty_of(p, "margin")[0], [0.0, 1.0, 0.6], atol=1e-6)
    batch = uncertainty_of(np.stack([p, p]), "margin")  # (B, K, H, W) -> (B, H, W)
    assert batch.shape == (2, 1, 3)


def test_predict_uncertainty_follows_the_probabilities(tiny):
    data, run = tiny
    image = np.asarray(Image.open(sorted((data / "test" / "images").iterdir())[0]))
    p = Predictor.from_run(run, device="cpu")
    u = p.predict_uncertainty(image)
    assert u.shape == image.shape and u.dtype == np.float32
    assert 0 <= u.min() and u.max() <= 1
    np.testing.assert_allclose(u, uncertainty_of(p.predict_proba(image)), atol=1e-6)
    m = p.predict_uncertainty(image, measure="margin")
    assert m.shape == image.shape and not np.allclose(m, u)


def test_disagreement_of_tta_passes(tiny):
    data, run = tiny
    image = np.asarray(Image.open(sorted((data / "test" / "images").iterdir())[0]))
    p = Predictor.from_run(run, device="cpu", tta="flips")
    d = p.predict_uncertainty(image, measure="disagreement")
    labels = p.predict(image)
    passes = [
        Predictor.from_run(run, device="cpu", tta=t).predict(image)
        for t in ("identity", "flip_y", "flip_x", "rot180")
    ]
    want = np.mean([q != labels for q in passes], axis=0)
    np.testing.assert_allclose(d, want, atol=1e-6)
    with pytest.raises(TomosegError, match="tta='flips'"):
        Predictor.from_run(run, device="cpu").predict_uncertainty(image, measure="disagreement")
    with pytest.raises(TomosegError, match="measure='variance'"):
        p.predict_uncertainty(image, measure="variance")
