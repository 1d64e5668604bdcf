"""Training-time augmentation of (image, mask) crops, built from MONAI dictionary transforms.

A sample is a dict ``{"image": float tensor (C, H, W), "mask": integer tensor (1, H, W)}``
(other keys pass through untouched). Geometric transforms move the image and the mask together;
the mask is only ever resampled with nearest neighbour, so it keeps its integer class ids.

:func:`augment` seeds the whole transform from one integer before each call, so a draw is a pure
function of that seed: a trainer that passes ``seed = f(base seed, epoch, sample index)`` gives
each sample a fresh draw every epoch and resumes an interrupted run identically.

The default augmentation (flips and 90-degree rotations, no intensity jitter) runs as plain
``torch.flip`` / ``torch.rot90`` calls with the random draws MONAI's ``Compose`` would make from
the same seed (:func:`_geometric_plan`), so it gives the very same crops about 10x faster than
calling the MONAI transforms; other settings run the MONAI transforms.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping
from numbers import Real
from typing import Any

import numpy as np
import torch
from monai.data import get_track_meta, set_track_meta
from monai.transforms import (
    Compose,
    Rand2DElasticd,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandRotate90d,
    RandRotated,
    RandScaleIntensityd,
    RandScaleIntensityFixedMeand,
    RandShiftIntensityd,
    RandSimulateLowResolutiond,
)

from tomoseg.config.schema import AUG_RANGES
from tomoseg.data.sources import IGNORE_INDEX
from tomoseg.errors import TomosegError

_MAX_SEED = 2**32  # MONAI's MAX_SEED: random states are seeded below it

ROTATIONS = ("none", "90", "any")
KEYS = ("image", "mask")

#: nnU-Net's augmentation (Isensee et al., Nature Methods 2021; batchgenerators' defaults in
#: nnU-Net v2's trainer): the probability of each transform per crop, and the strength nnU-Net
#: uses (what ``TrainConfig``'s ``aug_*`` options take to reproduce it; they are 0, off, by
#: default). Spatial: rotation, scaling (0.7-1.4) and elastic deformation (off in nnU-Net v2)
#: share one resampling, applied with ``aug_spatial_prob`` (nnU-Net: 0.2 for each).
NNUNET_PROBS = {
    "noise": 0.1,
    "blur": 0.2,
    "brightness": 0.15,
    "contrast": 0.15,
    "lowres": 0.25,
    "gamma_inverted": 0.1,
    "gamma": 0.3,
}
#: control-point spacing of the elastic deformation, px (a smooth field over a 256 px crop)
ELASTIC_SPACING = 32


def _check_prob(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not 0.0 <= float(value) <= 1.0:
        raise TomosegError(f"{name} must be a probability between 0 and 1, got {value!r}")
    return float(value)


def _check_strength(value: Any, name: str) -> float:
    low, high = AUG_RANGES[name]
    ok = not isinstance(value, bool) and isinstance(value, Real) and math.isfinite(float(value))
    if not ok or not (float(value) == 0 or low <= float(value) <= high):
        raise TomosegError(
            f"aug_{name} must be 0 (off) or a number from {low:g} to {high:g}, got {value!r}"
        )
    return float(value)


def build_augmentation(
    rotation: str = "90",
    flip_prob: float = 0.5,
    rotate_prob: float = 0.5,
    intensity_jitter: float = 0.0,
    *,
    spatial_prob: float = 0.2,
    scale: float = 0.0,
    rotate: float = 0.0,
    elastic: float = 0.0,
    brightness: float = 0.0,
    contrast: float = 0.0,
    gamma: float = 0.0,
    noise: float = 0.0,
    blur: float = 0.0,
    lowres: float = 0.0,
) -> Compose:
    """Build the random augmentation applied to each training crop.

    Args:
        rotation: ``"90"``: with probability ``rotate_prob`` rotate by k x 90 degrees, k uniform
            in 1..3 (exact, no interpolation; an odd k swaps H and W of a non-square crop);
            ``"any"``: with probability ``rotate_prob`` rotate by an angle uniform in
            [-pi, pi], keeping the size (image bilinear, mask nearest, corners filled by
            reflection for both); ``"none"``: no rotation.
        flip_prob: probability of a vertical flip (axis H) and, independently, of a horizontal
            flip (axis W).
        rotate_prob: probability of a rotation (ignored for ``"none"``).
        intensity_jitter: j >= 0; if > 0, the image (never the mask) is, each with probability
            0.5, scaled by ``1 + U(-j, j)`` and shifted by ``U(-j, j)``.
        spatial_prob: probability of the spatial transform below (when any of its strengths
            is set): one resampling of image (bilinear) and mask (nearest neighbour) together;
            what it brings in from outside the crop is 0 in the image (the normalised lower
            bound, as non-finite pixels are filled) and unannotated in the mask
            (:data:`~tomoseg.data.sources.IGNORE_INDEX`), so it trains nothing.
        scale: zoom by ``1 + U(-s, s)`` (MONAI ``RandAffined``; nnU-Net 0.7-1.4, s = 0.3).
        rotate: rotation by ``U(-r, r)`` degrees (small rotations; the 90-degree turns above
            give the rest).
        elastic: elastic deformation (MONAI ``Rand2DElasticd``): control points every
            :data:`ELASTIC_SPACING` px displaced by ``N(0, 1) x U(0, e)`` px, B-spline
            interpolated; rotation and scaling then happen in the same resampling.
        brightness: multiply the image by ``1 + U(-b, b)``, p 0.15 (``RandScaleIntensityd``;
            nnU-Net 0.25).
        contrast: scale the image about its mean by ``1 + U(-c, c)``, its range kept, p 0.15
            (``RandScaleIntensityFixedMeand``; nnU-Net's contrast transform, 0.25).
        gamma: gamma correction ``x -> x ** g``, ``g`` in ``[1 / (1 + gamma), 1 + gamma]`` on
            the crop's range, mean and standard deviation kept, p 0.3, and on the inverted
            image with p 0.1 (``RandAdjustContrastd``; nnU-Net 0.7-1.5, gamma = 0.5).
        noise: add Gaussian noise of standard deviation ``U(0, n)``, p 0.1
            (``RandGaussianNoised``; nnU-Net 0.1 on z-scored images).
        blur: Gaussian blur of sigma ``U(0.5, b)`` px per axis, p 0.2
            (``RandGaussianSmoothd``; nnU-Net 1.0).
        lowres: simulated low resolution: down-sample by ``U(1 - l, 1)`` (nearest) and back
            (bicubic), p 0.25 (``RandSimulateLowResolutiond``; nnU-Net 0.5).

    Each strength is 0 (off, the default) or within :data:`~tomoseg.config.schema.AUG_RANGES`. The intensity
    transforms act on the image only, in nnU-Net's order, after the flips, turns and the
    spatial transform.

    Returns:
        A MONAI ``Compose`` of dictionary transforms, callable on a sample dict. Apply it with
        :func:`augment` for seeded, reproducible draws.

    Raises:
        TomosegError: unknown rotation or out-of-range probabilities / jitter.
    """
    rot = str(rotation).strip().lower()
    if rot not in ROTATIONS:
        raise TomosegError(f"unknown rotation '{rotation}' (choose none, 90 or any)")
    p_flip = _check_prob(flip_prob, "flip probability")
    p_rot = _check_prob(rotate_prob, "rotation probability")
    if (
        isinstance(intensity_jitter, bool)
        or not isinstance(intensity_jitter, Real)
        or not math.isfinite(float(intensity_jitter))
        or float(intensity_jitter) < 0
    ):
        raise TomosegError(f"intensity jitter must be a number >= 0, got {intensity_jitter!r}")
    jitter = float(intensity_jitter)

    transforms: list[Callable[..., Any]] = [
        RandFlipd(keys=KEYS, prob=p_flip, spatial_axis=0),
        RandFlipd(keys=KEYS, prob=p_flip, spatial_axis=1),
    ]
    if rot == "90":
        transforms.append(RandRotate90d(keys=KEYS, prob=p_rot, max_k=3, spatial_axes=(0, 1)))
    elif rot == "any":
        transforms.append(
            RandRotated(
                keys=KEYS,
                range_x=math.pi,
                prob=p_rot,
                keep_size=True,
                mode=("bilinear", "nearest"),
                padding_mode=("reflection", "reflection"),
            )
        )
    if jitter > 0:
        transforms.append(RandScaleIntensityd(keys="image", factors=jitter, prob=0.5))
        transforms.append(RandShiftIntensityd(keys="image", offsets=jitter, prob=0.5))
    transforms += _spatial(_check_prob(spatial_prob, "spatial probability"), scale, rotate, elastic)
    transforms += _intensity(brightness, contrast, gamma, noise, blur, lowres)
    return Compose(transforms)


def _spatial(prob: float, scale: float, rotate: float, elastic: float) -> list[Any]:
    """Scaling, small rotations and elastic deformation in one resampling (or nothing)."""
    s = _check_strength(scale, "scale")
    r = math.radians(_check_strength(rotate, "rotate"))
    e = _check_strength(elastic, "elastic")
    if prob == 0 or not (s or r or e):
        return []
    common: dict[str, Any] = {
        "keys": KEYS,
        "prob": prob,
        "rotate_range": r or None,
        "scale_range": (s, s) if s else None,
        "mode": ("bilinear", "nearest"),
        "padding_mode": ("zeros", "zeros"),  # the mask is shifted so that 0 is unannotated
    }
    if e:
        return [Rand2DElasticd(spacing=ELASTIC_SPACING, magnitude_range=(0.0, e), **common)]
    return [RandAffined(**common)]


def _intensity(
    brightness: float, contrast: float, gamma: float, noise: float, blur: float, lowres: float
) -> list[Any]:
    """nnU-Net's intensity transforms (image only), in its order, those whose strength is set."""
    p = NNUNET_PROBS
    b, c = _check_strength(brightness, "brightness"), _check_strength(contrast, "contrast")
    g, n = _check_strength(gamma, "gamma"), _check_strength(noise, "noise")
    blur_, low = _check_strength(blur, "blur"), _check_strength(lowres, "lowres")
    out: list[Any] = []
    if n:
        out.append(RandGaussianNoised(keys="image", prob=p["noise"], std=n, sample_std=True))
    if blur_:
        sigma = (0.5, blur_)
        out.append(RandGaussianSmoothd(keys="image", sigma_x=sigma, sigma_y=sigma, prob=p["blur"]))
    if b:
        out.append(RandScaleIntensityd(keys="image", factors=b, prob=p["brightness"]))
    if c:
        out.append(
            RandScaleIntensityFixedMeand(
                keys="image", factors=c, fixed_mean=True, preserve_range=True, prob=p["contrast"]
            )
        )
    if low:
        out.append(
            RandSimulateLowResolutiond(
                keys="image",
                prob=p["lowres"],
                zoom_range=(1.0 - low, 1.0),
                downsample_mode="nearest",
                upsample_mode="bicubic",
            )
        )
    if g:
        kw = {"keys": "image", "gamma": (1.0 / (1.0 + g), 1.0 + g), "retain_stats": True}
        out.append(RandAdjustContrastd(prob=p["gamma_inverted"], invert_image=True, **kw))
        out.append(RandAdjustContrastd(prob=p["gamma"], invert_image=False, **kw))
    return out


def _plain(x: Any) -> torch.Tensor:
    """A MetaTensor / array as a plain ``torch.Tensor``."""
    if isinstance(x, torch.Tensor):
        return x.as_tensor() if hasattr(x, "as_tensor") else x
    return torch.as_tensor(np.asarray(x))


def augment(sample: Mapping[Hashable, Any], transform: Compose, seed: int) -> dict[Hashable, Any]:
    """Apply ``transform`` to a sample with its random state set from ``seed``.

    Args:
        sample: ``{"image": (C, H, W) float tensor, "mask": (1, H, W) integer tensor, ...}``;
            it is not modified.
        transform: from :func:`build_augmentation` (any MONAI ``Compose``).
        seed: any non-negative integer; the same seed gives the same draw. Large seeds are
            mixed down to 32 bits with ``numpy.random.SeedSequence``.

    Returns:
        A new dict with plain (non-Meta) tensors: ``image`` float32, ``mask`` int64; other keys
        as given.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise TomosegError(f"augmentation seed must be a non-negative integer, got {seed!r}")
    for key in KEYS:
        if key not in sample:
            raise TomosegError(f"augmentation sample lacks '{key}'")
    mask = _plain(sample["mask"])
    if mask.is_floating_point() or mask.is_complex():
        raise TomosegError(f"mask must hold integer class ids, got {mask.dtype}")
    state = int(np.random.SeedSequence(int(seed)).generate_state(1)[0])
    plan = _geometric_plan(transform, state)
    if plan is not None:
        image, mask = _plain(sample["image"]).to(torch.float32), mask.to(torch.int64)
        for dims, k in plan:
            image, mask = _apply(image, dims, k), _apply(mask, dims, k)
        result = dict(sample)
        result["image"], result["mask"] = image.contiguous(), mask.contiguous()
        return result
    transform.set_random_state(seed=state)
    data = dict(sample)
    data["image"] = _plain(sample["image"]).to(torch.float32)
    # unannotated becomes 0, the value a spatial transform pads with (shifted back below)
    data["mask"] = mask.to(torch.int64) - IGNORE_INDEX
    # Plain tensors in, plain tensors out: MONAI's metadata tracking would only slow this
    # per-sample hot path (about 3x), so it is switched off for the call and restored after.
    tracking = get_track_meta()
    set_track_meta(False)
    try:
        out = transform(data)
    finally:
        set_track_meta(tracking)
    result = dict(out)
    result["image"] = _plain(out["image"]).to(torch.float32).contiguous()
    m = _plain(out["mask"])
    if m.is_floating_point():  # resampled with nearest neighbour: already integral
        m = torch.round(m)
    result["mask"] = (m.to(torch.int64) + IGNORE_INDEX).contiguous()
    return result


def _geometric_plan(transform: Compose, state: int) -> list[tuple[tuple[int, int], int]] | None:
    """The flips and rotations ``transform`` seeded with ``state`` would apply, drawn exactly as
    MONAI draws them (``Compose.set_random_state`` seeds each transform from its own generator;
    ``RandFlipd`` draws ``rand() < prob``; ``RandRotate90d`` draws ``k = randint(max_k) + 1``,
    then ``rand() < prob``), as ``[(tensor dims, k), ...]`` (k = 0: a flip of ``dims[0]``).
    None when the transform holds anything else (it is run by MONAI then)."""
    steps = list(transform.transforms)
    if not all(type(t) in (RandFlipd, RandRotate90d) for t in steps):
        return None
    root = np.random.RandomState(state % _MAX_SEED)
    plan = []
    for t in steps:
        if isinstance(t, RandFlipd) and not isinstance(t.flipper.spatial_axis, int):
            return None
    transform.R = root
    for t in steps:  # the transforms are left in the state MONAI leaves them in
        t.R = r = np.random.RandomState(int(root.randint(_MAX_SEED, dtype="uint32")) % _MAX_SEED)
        if isinstance(t, RandRotate90d):
            t._rand_k = k = int(r.randint(t.max_k)) + 1
            t._do_transform = bool(r.rand() < t.prob)
            if t._do_transform:
                a, b = t.spatial_axes
                plan.append(((a + 1, b + 1), k))
        else:
            t._do_transform = bool(r.rand() < t.prob)
            if t._do_transform:
                axis = t.flipper.spatial_axis
                plan.append(((axis + 1, axis + 1), 0))
    return plan


def _apply(x: torch.Tensor, dims: tuple[int, int], k: int) -> torch.Tensor:
    return torch.flip(x, (dims[0],)) if k == 0 else torch.rot90(x, k, dims)
