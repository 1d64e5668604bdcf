"""The default augmentation's torch fast path gives MONAI's crops for the same seed."""

from __future__ import annotations

import pytest
import torch

from tomoseg.data import augment as aug


def _monai(sample, transform, seed, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(aug, "_geometric_plan", lambda t, s: None)
        return aug.augment(sample, transform, seed)


@pytest.mark.parametrize("rotation", ["90", "none"])
@pytest.mark.parametrize("shape", [(1, 12, 12), (1, 10, 14), (2, 8, 8)])
def test_fast_path_equals_monai(rotation, shape, monkeypatch):
    transform = aug.build_augmentation(rotation, 0.5, 0.7)
    g = torch.Generator().manual_seed(0)
    sample = {
        "image": torch.rand(*shape, generator=g),
        "mask": torch.randint(0, 3, (1, *shape[1:]), generator=g),
        "id": "x",
    }
    seen = set()
    for seed in [*range(120), 2**40 + 3]:
        fast = aug.augment(sample, transform, seed)
        ref = _monai(sample, transform, seed, monkeypatch)
        for key in ("image", "mask"):
            assert fast[key].dtype == ref[key].dtype and torch.equal(fast[key], ref[key]), seed
        assert fast["id"] == "x"
        seen.add(fast["image"].numpy().tobytes())
    assert len(seen) == (8 if rotation == "90" or shape[1] != shape[2] else 4) or len(seen) > 3


def test_same_seed_same_crop_and_plan_only_for_flips_and_turns():
    sample = {"image": torch.rand(1, 16, 16), "mask": torch.randint(0, 2, (1, 16, 16))}
    t = aug.build_augmentation("90")
    a, b = aug.augment(sample, t, 42), aug.augment(sample, t, 42)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert aug._geometric_plan(t, 1) is not None
    assert aug._geometric_plan(aug.build_augmentation("any"), 1) is None
    assert aug._geometric_plan(aug.build_augmentation("90", intensity_jitter=0.1), 1) is None
