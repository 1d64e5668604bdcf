"""nnU-Net's augmentation breadth (data/augment.py ``aug_*``): spatial transforms keep the
labels integral and pad with the unannotated label, intensity transforms touch the image only,
every strength is range-checked in one line on every path."""

from __future__ import annotations

import pytest
import torch
from conftest import make_dataset

from tomoseg.config.schema import AUG_RANGES, TrainConfig, load_config
from tomoseg.data.augment import augment, build_augmentation
from tomoseg.data.sources import IGNORE_INDEX
from tomoseg.errors import TomosegError

NNUNET_INTENSITY = {
    "brightness": 0.25,
    "contrast": 0.25,
    "gamma": 0.5,
    "noise": 0.1,
    "blur": 1.0,
    "lowres": 0.5,
}


def _blobs(size: int = 48) -> torch.Tensor:
    mask = torch.zeros(1, size, size, dtype=torch.int64)
    mask[:, 6:18, 8:30] = 1
    mask[:, 26:40, 20:34] = 2
    mask[:, 0:4, :] = IGNORE_INDEX  # an unannotated band
    return mask


@pytest.mark.parametrize(
    "kw",
    [{"scale": 0.5}, {"rotate": 45.0}, {"elastic": 6.0, "scale": 0.3}],
    ids=["scale", "rotate", "elastic"],
)
def test_spatial_moves_image_and_mask_together_and_pads_unannotated(kw):
    """A spatial draw resamples image (bilinear) and mask (nearest) alike: labels stay the
    given ids, the image agrees with the mask away from edges, and what comes in from outside
    the crop is image 0 and mask IGNORE_INDEX (it trains nothing)."""
    t = build_augmentation("none", flip_prob=0.0, spatial_prob=1.0, **kw)
    mask = _blobs()
    image = mask.clamp(min=0).to(torch.float32) + 1.0  # 1, 2, 3 inside the crop; 0 outside
    padded = 0
    for seed in range(6):
        out = augment({"image": image, "mask": mask}, t, seed=seed)
        m, im = out["mask"], out["image"]
        assert m.shape == mask.shape and m.dtype == torch.int64
        assert set(m.unique().tolist()) <= {IGNORE_INDEX, 0, 1, 2}
        inside = m >= 0
        agree = (im[inside].round() == (m[inside] + 1).to(torch.float32)).float().mean()
        assert agree > 0.9, float(agree)
        assert not torch.equal(m, mask)
        outside = im == 0  # brought in from beyond the crop
        padded += int(outside.sum())
        assert (m[outside] == IGNORE_INDEX).all()
    assert padded > 0  # scaling down or rotating brings in outside pixels


def test_spatial_probability_zero_or_no_strength_adds_nothing():
    assert len(build_augmentation("none", spatial_prob=0.0, scale=0.3).transforms) == 2
    assert len(build_augmentation("none", spatial_prob=1.0).transforms) == 2


@pytest.mark.parametrize("name", sorted(NNUNET_INTENSITY))
def test_each_intensity_transform_changes_the_image_only(name):
    t = build_augmentation("none", flip_prob=0.0, **{name: NNUNET_INTENSITY[name]})
    assert len(t.transforms) >= 3
    torch.manual_seed(0)
    s = {"image": torch.rand(1, 32, 32), "mask": _blobs(32)}
    changed = 0
    for seed in range(40):
        out = augment(s, t, seed=seed)
        assert torch.equal(out["mask"], s["mask"])
        assert out["image"].shape == s["image"].shape and torch.isfinite(out["image"]).all()
        changed += not torch.allclose(out["image"], s["image"])
        assert torch.equal(augment(s, t, seed=seed)["image"], out["image"])  # seeded
    assert changed >= 2  # p 0.1 to 0.4 per crop


def test_flips_and_turns_still_come_first_and_fresh_each_seed():
    t = build_augmentation(spatial_prob=0.2, scale=0.3, brightness=0.25)
    names = [type(x).__name__ for x in t.transforms]
    assert names[:3] == ["RandFlipd", "RandFlipd", "RandRotate90d"]
    s = {"image": torch.rand(1, 16, 16), "mask": torch.zeros(1, 16, 16, dtype=torch.int64)}
    draws = {tuple(augment(s, t, seed=i)["image"].flatten()[:4].tolist()) for i in range(8)}
    assert len(draws) >= 4


@pytest.mark.parametrize(
    "name,bad", [("scale", 0.6), ("rotate", -1.0), ("blur", 0.2), ("noise", 2.0), ("gamma", 1.5)]
)
def test_out_of_range_strength_is_one_error(name, bad):
    with pytest.raises(TomosegError, match=f"aug_{name} must be 0"):
        build_augmentation(**{name: bad})
    with pytest.raises(TomosegError, match=f"aug_{name}={bad!r}.*aug_{name} must be 0"):
        load_config(None, {f"aug_{name}": bad})


def test_defaults_are_off_and_every_strength_has_a_range():
    cfg = TrainConfig()
    for name in AUG_RANGES:
        assert getattr(cfg, f"aug_{name}") == 0.0
    assert cfg.aug_spatial_prob == 0.2


def test_cli_out_of_range_is_one_error_line(tmp_path, run_cli):
    data = make_dataset(tmp_path / "d")
    code, _, err = run_cli("train", "--data", data, "--out", tmp_path / "r", "--aug-scale", "0.9")
    assert code != 0 and err.count("\n") == 1 and "--aug-scale" in err, err
    assert not (tmp_path / "r").exists()
