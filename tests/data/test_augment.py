"""Tests of tomoseg.augment: seeded MONAI augmentation of (image, mask) samples."""

from __future__ import annotations

import pytest
import torch

from tomoseg.data.augment import augment, build_augmentation
from tomoseg.errors import TomosegError


def _sample(h: int = 6, w: int = 8) -> dict:
    """An image whose pixel values equal its mask's class ids (all distinct, no symmetry)."""
    mask = torch.arange(h * w, dtype=torch.int64).reshape(1, h, w)
    return {"image": mask.to(torch.float32), "mask": mask, "id": "s0"}


def _symmetries(x: torch.Tensor) -> dict[tuple, tuple[bool, bool, int]]:
    """Every (vflip, hflip, quarter turns k) draw -> the (C, H, W) result it gives."""
    out = {}
    for v in (False, True):
        for h in (False, True):
            for k in range(4):
                y = x
                if v:
                    y = torch.flip(y, dims=(1,))
                if h:
                    y = torch.flip(y, dims=(2,))
                y = torch.rot90(y, k, dims=(1, 2))
                out.setdefault((tuple(y.shape), tuple(y.flatten().tolist())), (v, h, k))
    return out


def _element(out: torch.Tensor, table: dict) -> tuple[bool, bool, int]:
    """Which symmetry of the square an output is (read from the output alone: pixel values are
    all distinct), as a canonical (vflip, hflip, k) draw."""
    return table[(tuple(out.shape), tuple(out.flatten().tolist()))]


def _law(p_flip: float, p_rot: float) -> dict[tuple[bool, bool, int], float]:
    """Probability of each of the 8 symmetries under the documented draw: two independent flips
    with p_flip, then with p_rot a turn by k = 1..3 quarter turns (uniform)."""
    x = _sample()["image"]
    table = _symmetries(x)
    law: dict[tuple[bool, bool, int], float] = {}
    for v in (False, True):
        for h in (False, True):
            for k in range(4):
                pk = (1 - p_rot) if k == 0 else p_rot / 3
                pv = p_flip if v else 1 - p_flip
                ph = p_flip if h else 1 - p_flip
                y = x
                if v:
                    y = torch.flip(y, dims=(1,))
                if h:
                    y = torch.flip(y, dims=(2,))
                e = _element(torch.rot90(y, k, dims=(1, 2)), table)
                law[e] = law.get(e, 0.0) + pv * ph * pk
    return law


def test_same_seed_same_result_and_plain_tensors():
    t = build_augmentation("90")
    a = augment(_sample(), t, seed=11)
    b = augment(_sample(), t, seed=11)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert type(a["image"]) is torch.Tensor and type(a["mask"]) is torch.Tensor
    assert a["image"].dtype == torch.float32 and a["mask"].dtype == torch.int64
    assert a["id"] == "s0"
    # A new transform object with the same seed draws the same.
    c = augment(_sample(), build_augmentation("90"), seed=11)
    assert torch.equal(a["image"], c["image"])


def test_different_seeds_give_different_draws():
    t = build_augmentation("90")
    outputs = set()
    for seed in range(40):
        out = augment(_sample(), t, seed=seed)
        outputs.add(tuple(out["image"].flatten().tolist()))
    assert len(outputs) == 8  # all 8 symmetries of the square occur


def test_large_seeds_accepted_and_distinct():
    t = build_augmentation("90")
    outs = {
        tuple(augment(_sample(), t, seed=2**40 + s)["image"].flatten().tolist()) for s in range(30)
    }
    assert len(outs) > 3
    with pytest.raises(TomosegError):
        augment(_sample(), t, seed=-1)


def test_symmetries_follow_the_documented_law_and_mask_matches():
    """Two independent flips with probability 0.5 each, then with probability 0.5 a turn of
    k = 1..3 quarter turns: the frequencies of the 8 resulting symmetries match that law."""
    t = build_augmentation("90", flip_prob=0.5, rotate_prob=0.5)
    table = _symmetries(_sample()["image"])
    law = _law(0.5, 0.5)
    n = 800
    counts: dict = {}
    for seed in range(n):
        out = augment(_sample(), t, seed=seed)
        e = _element(out["image"], table)
        counts[e] = counts.get(e, 0) + 1
        assert torch.equal(out["mask"].to(torch.float32), out["image"])
    assert set(counts) == set(law)
    for e, p in law.items():
        assert abs(counts[e] / n - p) < 0.05, (e, counts[e] / n, p)


def test_flips_alone_are_independent():
    """Without rotation the four flip combinations each occur about a quarter of the time."""
    t = build_augmentation("none", flip_prob=0.5)
    table = _symmetries(_sample()["image"])
    n = 400
    counts: dict = {}
    for seed in range(n):
        e = _element(augment(_sample(), t, seed=seed)["image"], table)
        counts[e] = counts.get(e, 0) + 1
    assert len(counts) == 4
    assert all(abs(c / n - 0.25) < 0.07 for c in counts.values()), counts


@pytest.mark.parametrize("rotation", ["90", "none"])
def test_mask_transformed_exactly_like_image(rotation):
    t = build_augmentation(rotation, flip_prob=0.5, rotate_prob=0.5)
    s = _sample()
    values = set(s["mask"].flatten().tolist())
    for seed in range(30):
        out = augment(s, t, seed=seed)
        assert out["mask"].dtype == torch.int64
        assert torch.equal(out["image"], out["mask"].to(torch.float32))
        assert set(out["mask"].flatten().tolist()) == values
    # The input sample is not modified.
    assert torch.equal(s["image"], _sample()["image"])


def test_no_rotation_keeps_shape_and_probabilities_zero_is_identity():
    t = build_augmentation("none", flip_prob=0.0)
    for seed in range(5):
        out = augment(_sample(), t, seed=seed)
        assert torch.equal(out["image"], _sample()["image"])
    assert len(build_augmentation("none").transforms) == 2


def test_any_rotation_keeps_size_and_integer_labels():
    t = build_augmentation("any", flip_prob=0.0, rotate_prob=1.0)
    mask = torch.zeros(1, 32, 32, dtype=torch.int64)
    mask[:, 4:12, 6:26] = 3  # ids 0, 3, 5: interpolating labels would create 1, 2 or 4
    mask[:, 20:28, 8:14] = 5
    img = torch.rand(1, 32, 32)
    changed = 0
    for seed in range(10):
        out = augment({"image": img, "mask": mask}, t, seed=seed)
        assert out["image"].shape == img.shape and out["mask"].shape == mask.shape
        assert out["mask"].dtype == torch.int64 and out["image"].dtype == torch.float32
        assert set(out["mask"].unique().tolist()) <= {0, 3, 5}
        changed += not torch.equal(out["mask"], mask)
    assert changed >= 8


def test_any_rotation_moves_image_and_mask_together():
    t = build_augmentation("any", flip_prob=0.0, rotate_prob=1.0)
    mask = torch.zeros(1, 40, 40, dtype=torch.int64)
    mask[:, 5:15, 8:30] = 1
    out = augment({"image": mask.to(torch.float32), "mask": mask}, t, seed=3)
    # Bilinear image and nearest mask agree away from the label edges.
    agree = (out["image"].round().long() == out["mask"]).float().mean()
    assert agree > 0.95


def test_intensity_jitter_changes_image_only():
    t = build_augmentation("none", flip_prob=0.0, intensity_jitter=0.2)
    s = {"image": torch.rand(1, 8, 8), "mask": torch.ones(1, 8, 8, dtype=torch.int64)}
    changed = 0
    for seed in range(10):
        out = augment(s, t, seed=seed)
        assert torch.equal(out["mask"], s["mask"])
        changed += not torch.allclose(out["image"], s["image"])
    assert changed >= 5


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rotation": "45"},
        {"rotation": "random"},
        {"flip_prob": 1.5},
        {"rotate_prob": -0.1},
        {"intensity_jitter": -1.0},
        {"intensity_jitter": float("inf")},
    ],
)
def test_invalid_settings_raise(kwargs):
    with pytest.raises(TomosegError):
        build_augmentation(**kwargs)


def test_float_mask_refused():
    t = build_augmentation()
    with pytest.raises(TomosegError, match="integer class ids"):
        augment({"image": torch.zeros(1, 4, 4), "mask": torch.zeros(1, 4, 4)}, t, seed=0)
