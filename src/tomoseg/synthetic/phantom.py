"""Synthetic X-ray tomography phantom: the project's embedded default dataset.

The phantom imitates transverse slices of a spinal cord imaged by X-ray tomography. Consecutive
slices are cut from **one analytic 3D scene** (isotropic voxels, ``Z = slices``) so that every
slice can be rendered on its own with memory bounded by a few slice-sized buffers; the full
volume is never allocated.

The scene holds:

* **Somas** (class 1): ellipsoids with random axes (about 2-4 % of ``min(H, W)``) and random 3D
  orientation, a slightly irregular surface (a low-frequency perturbation of the radial function,
  evaluated exactly, so the mask is exact), a slightly darker nucleus and a small bright
  nucleolus. They are placed by rejection sampling with a gap so that they never touch; every
  soma is checked to be one 3D connected component (26-connectivity) inside the rendered slab and
  dropped from the scene otherwise (a rare grazing cap), so each soma is exactly one object.
* **Vessels** (background, class 0) of almost the same brightness as somas: smooth random 3D
  curves (a direction that meanders around a mean axis) crossing the volume, with a radius that
  varies along the curve from small to about a third of the soma radius. Half of the vessel
  volume runs roughly along ``z`` (round blobs in every slice: soma look-alikes), half runs
  roughly in-plane (elongated tubes). A vessel is the union of spheres centred on densely sampled
  curve points; a slice shows the union of their disc-shaped intersections, so tubes are exact
  and continuous across slices. Where a vessel crosses a soma, the soma wins.
* **Glia**: a few small, slightly dimmer spheres (background).
* A textured background (3D low-frequency noise), slow shading, a Gaussian point-spread blur,
  an edge-enhancement fringe (phase contrast), ring artefacts centred on the rotation axis
  (identical in every slice, like a detector defect), a few faint streaks per slice, cupping,
  and Gaussian + Poisson-like noise.

Intensities are computed in ``[0, 1]`` (background ~0.35, vessels ~0.58, somas ~0.62) and saved
as uint16 (``1.0 -> 65535``). A global threshold therefore picks vessels along with somas, while a
shape-aware model can tell them apart.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from scipy import ndimage
from skimage.filters import threshold_otsu

from tomoseg.errors import TomosegError
from tomoseg.io.datasets import SPLITS
from tomoseg.io.writers import atomic_write, prepare_output_dir, write_image, write_json, write_mask
from tomoseg.utils.format import pydantic_message

__all__ = [
    "CLASSES",
    "INTENSITY_SCALE",
    "PhantomParams",
    "PhantomScene",
    "generate_phantom",
    "otsu_baseline",
    "parse_shape",
    "slice_id",
    "split_slices",
    "to_uint16",
]

CLASSES = ["background", "soma"]
INTENSITY_SCALE = 65535  # intensity 1.0 is stored as this uint16 value
MIN_SIDE = 32
MIN_SLICES = 3
_FULL_3D = np.ones((3, 3, 3), dtype=bool)

# Independent random streams of one seed, so that adding a feature does not reshuffle the others.
_STREAM_SOMAS, _STREAM_VESSELS, _STREAM_GLIA, _STREAM_TEXTURE, _STREAM_SHADING = 1, 2, 3, 4, 5
_STREAM_RINGS, _STREAM_SLICE = 6, 7
_STREAM_TOUCHING = 8


class PhantomParams(BaseModel):
    """Knobs of the phantom generator. Lengths are relative, intensities are in ``[0, 1]``.

    The defaults give a soma area fraction of about 5-7 % and vessels covering a similar area.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    soma_radius: tuple[float, float] = (0.02, 0.04)
    """Range of the largest soma semi-axis, as a fraction of ``min(H, W)`` (at least 3 voxels)."""
    soma_aspect: float = Field(0.7, gt=0.3, le=1.0)
    """The two other semi-axes are this to 1 times the largest."""
    soma_roughness: float = Field(0.08, ge=0.0, le=0.2)
    """Largest relative radial perturbation of the soma surface."""
    soma_fraction: float = Field(0.06, ge=0.0, le=0.3)
    """Target soma volume fraction (ignored when ``n_somas`` is given)."""
    soma_gap: float = Field(0.2, ge=0.0)
    """Smallest gap between the bounding spheres of two somas, as a fraction of the mean soma
    radius (at least 2 voxels)."""
    touching: float = Field(0.0, ge=0.0, le=1.0)
    """Fraction of the somas placed in clusters of 2-3 touching somas (along the line between
    two centres, the somas overlap by 10-30 % of the smaller one's reach, before the surface
    roughness, so a few such pairs end up not touching; where two overlap, the later one's
    voxels win in the instance truth). 0: every soma stands alone."""
    vessel_fraction: float = Field(0.05, ge=0.0, le=0.3)
    """Target vessel volume fraction inside the slab."""
    vessel_radius: tuple[float, float] = (0.1, 0.36)
    """Range of vessel radii as a fraction of the mean soma radius (at least 1 voxel)."""
    longitudinal_share: float = Field(0.5, ge=0.0, le=1.0)
    """Share of the vessel volume in vessels running roughly along z (round in a slice)."""
    vessel_meander: float = Field(0.5, ge=0.0, le=2.0)
    """How far a vessel's direction wanders from its mean axis (0 = straight)."""
    glia_fraction: float = Field(0.006, ge=0.0, le=0.1)
    """Volume fraction of small dim spheres (background)."""
    background_level: float = 0.35
    soma_level: float = 0.62
    nucleus_level: float = 0.53
    nucleolus_level: float = 0.70
    vessel_level: float = 0.58
    glia_level: float = 0.48
    level_jitter: float = Field(0.015, ge=0.0)
    """Standard deviation of the per-object brightness."""
    texture: float = Field(0.03, ge=0.0)
    """RMS of the tissue texture (60 % of it shows inside objects)."""
    shading: float = Field(0.02, ge=0.0)
    """RMS of the slow intensity variation over the whole volume."""
    psf_sigma: float = Field(1.2, ge=0.0)
    """Gaussian point-spread function, in pixels."""
    phase_contrast: float = Field(0.5, ge=0.0)
    """Strength of the edge-enhancement fringe (unsharp mask of radius 2.5 px)."""
    noise: float = Field(0.03, ge=0.0)
    """Standard deviation of the additive Gaussian noise."""
    photon_noise: float = Field(0.04, ge=0.0)
    """Poisson-like noise: its standard deviation is ``photon_noise * sqrt(intensity)``."""
    rings: float = Field(0.03, ge=0.0)
    """Typical amplitude of the ring artefacts (0 = none)."""
    streaks: float = Field(1.0, ge=0.0)
    """Mean number of faint streaks per slice."""
    streak_amplitude: float = Field(0.02, ge=0.0)
    cupping: float = Field(0.03, ge=0.0)
    """Darkening at the corners relative to the centre (beam hardening)."""

    @model_validator(mode="after")
    def _ranges(self) -> PhantomParams:
        for name in ("soma_radius", "vessel_radius"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must satisfy 0 < low <= high, got ({lo}, {hi})")
        return self


# ----------------------------------------------------------------------------- validation


def _as_int(value: Any) -> int | None:
    """``value`` as an int when it is an integer (not a bool), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    return None


def parse_shape(text: str) -> tuple[int, int]:
    """Parse a slice shape written ``HxW`` (height x width), e.g. ``"1920x2300"``.

    A single number ``"512"`` means a square slice.

    Args:
        text: the shape as typed on the command line (``x``, ``X``, ``*`` or ``,`` separate).

    Returns:
        ``(H, W)``, both at least 32.

    Raises:
        TomosegError: not two positive integers, or a side below 32.
    """
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX*,×]\s*(\d+)\s*)?", str(text))
    if m is None:
        raise TomosegError(f"invalid shape '{text}': expected HxW such as 1920x2300")
    h = int(m.group(1))
    w = int(m.group(2)) if m.group(2) is not None else h
    return _check_shape((h, w))


def _check_shape(shape: Any) -> tuple[int, int]:
    if isinstance(shape, str):
        return parse_shape(shape)
    try:
        items = list(shape)
    except TypeError:
        items = []
    vals = [_as_int(v) for v in items]
    if len(vals) != 2 or any(v is None for v in vals):
        raise TomosegError(f"shape must be two integers (height, width), got {shape!r}")
    h, w = (int(v) for v in vals)  # type: ignore[arg-type]
    if h < MIN_SIDE or w < MIN_SIDE:
        raise TomosegError(f"shape must be at least {MIN_SIDE}x{MIN_SIDE} pixels, got {h}x{w}")
    return h, w


def _check_args(
    shape: Any, slices: Any, seed: Any, n_somas: Any
) -> tuple[tuple[int, int], int, int]:
    hw = _check_shape(shape)
    z = _as_int(slices)
    if z is None or z < MIN_SLICES:
        raise TomosegError(
            f"slices must be an integer >= {MIN_SLICES} (one slice at least for each of train, "
            f"val and test), got {slices!r}"
        )
    s = _as_int(seed)
    if s is None or s < 0:
        raise TomosegError(f"seed must be a non-negative integer, got {seed!r}")
    if n_somas is not None and (_as_int(n_somas) is None or n_somas < 0):
        raise TomosegError(f"n_somas must be a non-negative integer, got {n_somas!r}")
    return hw, z, s


def _resolve_params(params: PhantomParams | dict[str, Any] | None) -> PhantomParams:
    if params is None:
        return PhantomParams()
    if isinstance(params, PhantomParams):
        return params
    try:
        return PhantomParams.model_validate(params)
    except ValidationError as exc:
        raise TomosegError(f"invalid phantom parameters: {pydantic_message(exc)}") from None


# ----------------------------------------------------------------------------- scene parts


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *stream]))


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3x3 rotation matrix (columns are the local axes in z, y, x)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))[None, :]
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


@dataclass
class _Soma:
    """One soma: a perturbed ellipsoid with a nucleus and a nucleolus (float64 geometry)."""

    center: np.ndarray  # (3,) z, y, x
    radii: np.ndarray  # (3,) semi-axes along the columns of rot
    rot: np.ndarray  # (3, 3) columns: local axes in (z, y, x)
    bound: float  # radius of a bounding sphere
    half: np.ndarray  # (3,) half extents of an axis-aligned bounding box
    lobe_dirs: np.ndarray  # (K, 3) surface perturbation: directions ...
    lobe_freq: np.ndarray  # (K,) ... frequencies
    lobe_amp: np.ndarray  # (K,) ... amplitudes (sum <= roughness)
    lobe_phase: np.ndarray  # (K,)
    nucleus_off: np.ndarray  # (3,) in local normalised coordinates
    nucleus_size: float
    nucleolus_off: np.ndarray
    nucleolus_size: float
    level: float
    nucleus_level: float
    nucleolus_level: float

    def local(self, dz: Any, dy: Any, dx: Any) -> list[np.ndarray]:
        """Normalised local coordinates of offsets from the centre (broadcast arrays)."""
        r = self.rot
        return [(r[0, i] * dz + r[1, i] * dy + r[2, i] * dx) / self.radii[i] for i in range(3)]

    def inside(self, u: list[np.ndarray]) -> np.ndarray:
        """Exact membership test: ``|u| < 1 + perturbation(direction of u)``."""
        rho = np.sqrt(u[0] * u[0] + u[1] * u[1] + u[2] * u[2])
        inv = 1.0 / np.maximum(rho, 1e-12)
        g = np.zeros_like(rho)
        lobes = zip(self.lobe_dirs, self.lobe_freq, self.lobe_amp, self.lobe_phase, strict=True)
        for d, f, a, p in lobes:
            g += a * np.cos(f * (d[0] * u[0] + d[1] * u[1] + d[2] * u[2]) * inv + p)
        return rho < 1.0 + g

    def ball(self, u: list[np.ndarray], off: np.ndarray, size: float) -> np.ndarray:
        """Points of a small inner ellipsoid (nucleus / nucleolus) in local coordinates."""
        return (u[0] - off[0]) ** 2 + (u[1] - off[1]) ** 2 + (u[2] - off[2]) ** 2 < size * size


def _make_soma(rng: np.random.Generator, center: np.ndarray, a0: float, p: PhantomParams) -> _Soma:
    radii = a0 * np.concatenate([[1.0], rng.uniform(p.soma_aspect, 1.0, 2)])
    rng.shuffle(radii)
    rot = _random_rotation(rng)
    grow = 1.0 + p.soma_roughness
    half = grow * np.sqrt(((rot * radii[None, :]) ** 2).sum(axis=1))
    k = 4
    amp = p.soma_roughness * rng.dirichlet(np.ones(k))
    # The nucleus must stay inside the soma: |off| + size < 1 - roughness.
    n_size = rng.uniform(0.38, 0.48)
    n_off = _unit(rng.standard_normal(3)) * rng.uniform(0.0, 0.85 - p.soma_roughness - n_size)
    o_size = rng.uniform(0.08, 0.13)
    o_off = n_off + _unit(rng.standard_normal(3)) * rng.uniform(0.0, n_size - o_size - 0.05)
    level = p.soma_level + p.level_jitter * rng.standard_normal()
    return _Soma(
        center=center,
        radii=radii,
        rot=rot,
        bound=float(radii.max() * grow),
        half=half,
        lobe_dirs=_unit(rng.standard_normal((k, 3))),
        lobe_freq=rng.uniform(1.5, 3.5, k),
        lobe_amp=amp,
        lobe_phase=rng.uniform(0, 2 * np.pi, k),
        nucleus_off=n_off,
        nucleus_size=float(n_size),
        nucleolus_off=o_off,
        nucleolus_size=float(o_size),
        level=float(level),
        nucleus_level=float(level - (p.soma_level - p.nucleus_level)),
        nucleolus_level=float(level - (p.soma_level - p.nucleolus_level)),
    )


def _bspline_weights(f: np.ndarray) -> np.ndarray:
    """Cubic B-spline weights of the 4 neighbouring knots for fractional positions ``f``."""
    f2, f3 = f * f, f * f * f
    return (
        np.stack([(1 - f) ** 3, 3 * f3 - 6 * f2 + 4, -3 * f3 + 3 * f2 + 3 * f + 1, f3], axis=-1)
        / 6.0
    )


def _bspline_index(n: int, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """First knot index (n,) and float32 weights (n, 4) of pixels 0..n-1 for a knot spacing."""
    t = np.arange(n) / spacing
    i0 = np.floor(t).astype(np.int64)
    return i0, _bspline_weights(t - i0).astype(np.float32)


class _Noise3D:
    """Smooth isotropic 3D noise (sum of octaves of B-spline-smoothed white noise).

    The knot values of plane ``iz`` of an octave come from their own random stream, so any slice
    is computed from 4 knot planes per octave: no volume is stored.
    """

    def __init__(
        self, seed: int, stream: int, spacings: list[float], amps: list[float], rms: float
    ):
        self.seed, self.stream = seed, stream
        self.spacings = [max(float(s), 2.0) for s in spacings]
        a = np.asarray(amps, np.float64)
        # A cubic B-spline of unit white knots has a variance of about 0.48 per dimension.
        self.amps = a * rms / max(float(np.sqrt((a**2).sum())), 1e-12) / 0.48**1.5
        self._index: dict[tuple[int, int, int], Any] = {}

    def slice(self, z: float, h: int, w: int) -> np.ndarray:
        """The field on the plane ``z`` as a float32 (h, w) array."""
        out = np.zeros((h, w), np.float32)
        for octave, (sp, amp) in enumerate(zip(self.spacings, self.amps, strict=True)):
            if amp == 0:
                continue
            gh, gw = int(h / sp) + 5, int(w / sp) + 5
            key = (octave, h, w)
            if key not in self._index:
                self._index[key] = (_bspline_index(h, sp), _bspline_index(w, sp))
            (iy, wy), (ix, wx) = self._index[key]
            t = z / sp
            iz = math.floor(t)
            wz = _bspline_weights(np.array(t - iz))
            knots = np.zeros((gh, gw), np.float32)
            for j in range(4):
                rng = _rng(self.seed, self.stream, octave, iz + j + 2)
                knots += np.float32(wz[j] * amp) * rng.standard_normal((gh, gw), dtype=np.float32)
            # Separable cubic B-spline evaluation: 4 knots per pixel along x, then along y.
            rows = sum(knots[:, ix + j] * wx[None, :, j] for j in range(4))
            for j in range(4):
                out += rows[iy + j] * wy[:, j, None]
        return out


def _smooth_noise(rng: np.random.Generator, n: int, corr: float, dims: int) -> np.ndarray:
    """(n, dims) Gaussian noise smoothed along axis 0 with correlation ``corr`` samples, unit std."""
    w = rng.standard_normal((n, dims))
    if corr > 0.5:
        w = ndimage.gaussian_filter1d(w, corr, axis=0, mode="reflect")
        w *= math.sqrt(2 * math.sqrt(math.pi) * corr)
    return w


def _paint_discs(
    level: np.ndarray,
    mask: np.ndarray,
    cy: np.ndarray,
    cx: np.ndarray,
    rho: np.ndarray,
    values: np.ndarray,
) -> None:
    """Paint filled discs (pixel centres strictly inside) with their values, in order."""
    h, w = mask.shape
    y0 = np.maximum(np.ceil(cy - rho), 0).astype(np.int64)
    y1 = np.minimum(np.floor(cy + rho), h - 1).astype(np.int64) + 1
    x0 = np.maximum(np.ceil(cx - rho), 0).astype(np.int64)
    x1 = np.minimum(np.floor(cx + rho), w - 1).astype(np.int64) + 1
    ok = np.flatnonzero((y1 > y0) & (x1 > x0))
    ry = np.arange(h, dtype=np.float64)
    rx = np.arange(w, dtype=np.float64)
    r2 = rho * rho
    for i in ok.tolist():
        a, b, c, d = y0[i], y1[i], x0[i], x1[i]
        dy = ry[a:b] - cy[i]
        dx = rx[c:d] - cx[i]
        m = (dy * dy)[:, None] + (dx * dx)[None, :] < r2[i]
        mask[a:b, c:d] |= m
        level[a:b, c:d][m] = values[i]


# ----------------------------------------------------------------------------- the scene


class PhantomScene:
    """The analytic 3D scene of a phantom; renders any slice independently.

    Building the scene samples somas, vessels and glia, and checks that every soma is one 3D
    connected component inside the slab (one soma at a time, memory bounded by its bounding box).
    Rendering slice ``z`` depends only on the scene and ``(seed, z)``.

    Args:
        shape: slice shape ``(H, W)`` (or ``"HxW"``), both sides >= 32.
        slices: depth ``Z`` of the slab (>= 3); slice ``z`` is the plane at ``z`` voxels.
        seed: random seed (>= 0).
        n_somas: number of somas to place (default: from ``params.soma_fraction``); somas whose
            centres lie near the slab may not reach it, see :attr:`somas` for the visible ones.
        params: generator knobs (:class:`PhantomParams` or a dict of its fields).

    Raises:
        TomosegError: invalid arguments.
    """

    def __init__(
        self,
        shape: tuple[int, int] | str = (1920, 2300),
        slices: int = 12,
        seed: int = 0,
        n_somas: int | None = None,
        params: PhantomParams | dict[str, Any] | None = None,
    ) -> None:
        (self.height, self.width), self.slices, self.seed = _check_args(
            shape, slices, seed, n_somas
        )
        self.params = params = _resolve_params(params)
        m = min(self.height, self.width)
        lo, hi = (max(f * m, 3.0) for f in params.soma_radius)
        self.soma_radius_range = (lo, max(hi, lo))
        self.mean_soma_radius = 0.5 * (self.soma_radius_range[0] + self.soma_radius_range[1])
        vr = (max(f * self.mean_soma_radius, 1.0) for f in params.vessel_radius)
        vlo, vhi = vr
        self.vessel_radius_range = (vlo, max(vhi, vlo))
        self.dropped_somas = 0
        self.clusters: list[int] = []
        self.cluster_of: dict[int, int] = {}  # id(soma) -> its cluster
        self.touching_somas: set[int] = set()  # id(soma) of somas touching another one
        self.somas: list[_Soma] = self._place_somas(n_somas)
        self.n_vessels = 0
        #: each vessel's centre line: ((K, 3) float (z, y, x) voxel points, (K,) radii in voxels)
        self.vessel_lines: list[tuple[np.ndarray, np.ndarray]] = []
        self._spheres = self._make_spheres()
        self._texture = _Noise3D(
            self.seed, _STREAM_TEXTURE, [0.1 * m, 0.04 * m, 0.015 * m, 0.006 * m, 0.0025 * m],
            [1.0, 0.8, 0.6, 0.5, 0.5], params.texture,
        )  # fmt: skip
        self._shading = _Noise3D(self.seed, _STREAM_SHADING, [0.6 * m], [1.0], params.shading)
        self._static: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """Slice shape ``(H, W)``."""
        return self.height, self.width

    # -- somas

    def _place_somas(self, n_somas: int | None) -> list[_Soma]:
        p = self.params
        rng = _rng(self.seed, _STREAM_SOMAS)
        h, w, nz = self.height, self.width, self.slices
        lo, hi = self.soma_radius_range
        gap = max(2.0, p.soma_gap * self.mean_soma_radius)
        grow = 1.0 + p.soma_roughness
        mean_vol = 4 / 3 * np.pi * self.mean_soma_radius**3 * ((1 + p.soma_aspect) / 2) ** 2
        mean_b = self.mean_soma_radius * grow  # centres spread this far beyond the slab
        box_vol = (h + mean_b) * (w + mean_b) * (nz - 1 + 2 * mean_b)
        target = (
            n_somas if n_somas is not None else int(round(p.soma_fraction * box_vol / mean_vol))
        )
        centers = np.zeros((0, 3))
        bounds = np.zeros(0)
        placed: list[_Soma] = []
        trng = _rng(self.seed, _STREAM_TOUCHING)  # its own stream: touching=0 changes nothing
        groups: list[range] = []
        failures, max_failures = 0, 200 + 50 * target
        while len(placed) < target and failures < max_failures:
            a0 = rng.uniform(lo, hi)
            b = a0 * grow
            c = np.array(
                [
                    rng.uniform(-b, nz - 1 + b),
                    rng.uniform(-0.5 * b, h - 1 + 0.5 * b),
                    rng.uniform(-0.5 * b, w - 1 + 0.5 * b),
                ]
            )
            if bounds.size and np.any(np.linalg.norm(centers - c, axis=1) < bounds + b + gap):
                failures += 1
                continue
            soma = _make_soma(rng, c, a0, p)
            placed.append(soma)
            centers = np.vstack([centers, c])
            bounds = np.append(bounds, soma.bound)
            if p.touching > 0 and trng.random() < p.touching / (2.5 - 1.5 * p.touching):
                start = len(placed) - 1
                for _ in range(int(trng.integers(1, 3))):
                    if len(placed) >= target:
                        break
                    mate = self._mate(trng, placed[start:], centers[:start], bounds[:start], gap)
                    if mate is not None:
                        placed.append(mate)
                        centers = np.vstack([centers, mate.center])
                        bounds = np.append(bounds, mate.bound)
                if len(placed) - start > 1:
                    groups.append(range(start, len(placed)))
        visible = []
        clustered = {i for g in groups for i in g}
        for i, soma in enumerate(placed):
            if i in clustered:
                continue
            n_comp = self._soma_components(soma)
            if n_comp == 1:
                visible.append(soma)
            elif n_comp > 1:
                self.dropped_somas += 1
        for g in groups:  # a cluster: its somas in the order they are drawn (later ones win)
            members = [placed[i] for i in g]
            comps, touch = self._cluster_parts(members)
            if any(n > 1 for n in comps):
                self.dropped_somas += sum(n > 0 for n in comps)
                continue
            for soma, n, t in zip(members, comps, touch, strict=True):
                if n == 1:
                    self.cluster_of[id(soma)] = len(self.clusters)
                    if t:
                        self.touching_somas.add(id(soma))
                    visible.append(soma)
            self.clusters.append(len(self.clusters))
        rank = {id(soma): i for i, soma in enumerate(placed)}
        visible.sort(key=lambda soma: rank[id(soma)])
        if len(visible) > np.iinfo(np.uint16).max:
            raise TomosegError(f"too many somas ({len(visible)}) for uint16 labels; use fewer")
        return visible

    def _mate(
        self,
        rng: np.random.Generator,
        members: list[_Soma],
        centers: np.ndarray,
        bounds: np.ndarray,
        gap: float,
    ) -> _Soma | None:
        """A soma touching one of ``members`` (along the line between their centres, the two
        overlap by 10-30 % of the smaller one's reach), apart from the other members and clear
        of every soma outside the cluster (``centers``, ``bounds``, ``gap``); None after 20
        tries."""

        def reach(soma: _Soma, d: np.ndarray) -> float:  # centre to surface along d (no lobes)
            return float(1.0 / np.linalg.norm((soma.rot.T @ d) / soma.radii))

        lo, hi = self.soma_radius_range
        for _ in range(20):
            base = members[int(rng.integers(len(members)))]
            d = _unit(rng.standard_normal(3))
            mate = _make_soma(rng, np.zeros(3), rng.uniform(lo, hi), self.params)
            ra, rb = reach(base, d), reach(mate, d)
            mate.center = base.center + d * (ra + rb - rng.uniform(0.1, 0.3) * min(ra, rb))
            apart = True
            for m in members:
                if m is not base:
                    u = _unit(mate.center - m.center)
                    apart &= np.linalg.norm(mate.center - m.center) >= 0.8 * (
                        reach(m, u) + reach(mate, u)
                    )
            clear = not (
                bounds.size
                and np.any(
                    np.linalg.norm(centers - mate.center, axis=1) < bounds + mate.bound + gap
                )
            )
            if apart and clear:
                return mate
        return None

    def _cluster_parts(self, members: list[_Soma]) -> tuple[list[int], list[bool]]:
        """For each soma of a cluster drawn in order (a later one wins where two overlap): the
        number of 26-connected components of its voxels in the slab, and whether it touches
        another member (26-adjacent voxels)."""
        boxes = [b for b in (self._soma_box(m) for m in members) if b is not None]
        if not boxes:
            return [0] * len(members), [False] * len(members)
        box = tuple(
            slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes)) for a in range(3)
        )
        zz, yy, xx = (np.arange(s.start, s.stop, dtype=np.float64) for s in box)
        lab = np.zeros((zz.size, yy.size, xx.size), np.uint8)
        step = max(1, 500_000 // (yy.size * xx.size))
        for k, soma in enumerate(members, start=1):
            c = soma.center
            for a in range(0, zz.size, step):
                dz = (zz[a : a + step] - c[0])[:, None, None]
                u = soma.local(dz, (yy - c[1])[None, :, None], (xx - c[2])[None, None, :])
                lab[a : a + step][soma.inside(u)] = k
        comps, touch = [], []
        for k in range(1, len(members) + 1):
            mine = lab == k
            comps.append(int(ndimage.label(mine, structure=_FULL_3D)[1]) if mine.any() else 0)
            near = ndimage.binary_dilation(mine, structure=_FULL_3D)
            touch.append(bool((near & (lab > 0) & ~mine).any()))
        return comps, touch

    def _soma_box(self, soma: _Soma, z: int | None = None) -> tuple[slice, ...] | None:
        """Voxel bounding box of a soma clipped to the slab/image (or to slice ``z``)."""
        lims = (self.slices, self.height, self.width)
        out = []
        for ax in range(3):
            if ax == 0 and z is not None:
                continue
            a = max(math.ceil(soma.center[ax] - soma.half[ax]), 0)
            b = min(math.floor(soma.center[ax] + soma.half[ax]), lims[ax] - 1) + 1
            if b <= a:
                return None
            out.append(slice(a, b))
        return tuple(out)

    def _soma_components(self, soma: _Soma) -> int:
        """Number of 26-connected components of a soma inside the slab (0 = not visible)."""
        box = self._soma_box(soma)
        if box is None:
            return 0
        zz, yy, xx = (np.arange(s.start, s.stop, dtype=np.float64) for s in box)
        c = soma.center
        inside = np.zeros((zz.size, yy.size, xx.size), bool)
        step = max(1, 500_000 // (yy.size * xx.size))  # bound the float64 temporaries
        for a in range(0, zz.size, step):
            dz = (zz[a : a + step] - c[0])[:, None, None]
            u = soma.local(dz, (yy - c[1])[None, :, None], (xx - c[2])[None, None, :])
            inside[a : a + step] = soma.inside(u)
        if not inside.any():
            return 0
        return int(ndimage.label(inside, structure=_FULL_3D)[1])

    # -- vessels and glia

    def _make_spheres(self) -> dict[str, np.ndarray]:
        """Sample vessel curves and glia; return all spheres sorted by z."""
        p = self.params
        h, w, nz = self.height, self.width, self.slices
        rlo, rhi = self.vessel_radius_range
        margin = rhi + 1.0
        box_lo = np.array([-margin, -margin, -margin])
        box_hi = np.array([nz - 1 + margin, h - 1 + margin, w - 1 + margin])
        slab_vol = float(nz * h * w)
        ds = max(0.25, 0.3 * rlo)
        m = min(h, w)
        rng = _rng(self.seed, _STREAM_VESSELS)
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        for family, share in (("long", p.longitudinal_share), ("trans", 1 - p.longitudinal_share)):
            target = p.vessel_fraction * share * slab_vol
            vol, count = 0.0, 0
            depth = box_hi[0] - box_lo[0]
            span = float(np.linalg.norm(box_hi - box_lo))
            reach = min(span, 4.0 * depth) if family == "long" else span
            n_half = int(math.ceil(1.2 * reach / ds)) + 2
            while vol < target and count < 5000:
                count += 1
                if family == "long":
                    tilt = np.arccos(rng.uniform(np.cos(np.radians(35)), 1.0))
                    azim = rng.uniform(0, 2 * np.pi)
                    axis = np.array(
                        [np.cos(tilt), np.sin(tilt) * np.cos(azim), np.sin(tilt) * np.sin(azim)]
                    )
                else:
                    elev = np.radians(rng.uniform(-12, 12))
                    azim = rng.uniform(0, 2 * np.pi)
                    axis = np.array(
                        [np.sin(elev), np.cos(elev) * np.cos(azim), np.cos(elev) * np.sin(azim)]
                    )
                seed_pt = np.array(
                    [rng.uniform(0, nz - 1), rng.uniform(0, h - 1), rng.uniform(0, w - 1)]
                )
                r0 = float(np.exp(rng.uniform(np.log(rlo), np.log(rhi))))
                level = p.vessel_level + p.level_jitter * rng.standard_normal()
                pos, rad = self._vessel_curve(
                    rng, axis, seed_pt, n_half, ds, r0, m, family == "trans"
                )
                inside = np.all((pos >= box_lo) & (pos <= box_hi), axis=1)
                out = np.flatnonzero(~inside)
                left = out[out < n_half]
                right = out[out > n_half]
                a = int(left[-1]) + 1 if left.size else 0
                b = int(right[0]) if right.size else len(pos)
                pos, rad = pos[a:b], rad[a:b]
                in_slab = (
                    (pos[:, 0] >= 0) & (pos[:, 0] <= nz - 1)
                    & (pos[:, 1] >= 0) & (pos[:, 1] <= h - 1)
                    & (pos[:, 2] >= 0) & (pos[:, 2] <= w - 1)
                )  # fmt: skip
                vol += float(np.pi * (rad[in_slab] ** 2).sum() * ds)
                # Thin the points so that neighbours are 0.3 local radii apart.
                t = np.cumsum(ds / (0.3 * rad))
                keep = np.flatnonzero(np.diff(np.floor(t), prepend=-1.0) > 0)
                if keep[-1] != len(pos) - 1:
                    keep = np.append(keep, len(pos) - 1)
                parts.append((pos[keep], rad[keep], np.full(keep.size, level), np.ones(keep.size)))
                self.vessel_lines.append((pos[keep], rad[keep]))
                self.n_vessels += 1
        # Glia: small isolated spheres.
        rng = _rng(self.seed, _STREAM_GLIA)
        g_lo, g_hi = 0.2 * self.mean_soma_radius, 0.32 * self.mean_soma_radius
        g_lo, g_hi = max(g_lo, 1.0), max(g_hi, 1.5)
        mean_vol = 4 / 3 * np.pi * ((g_lo + g_hi) / 2) ** 3
        n_glia = int(round(p.glia_fraction * slab_vol / mean_vol))
        if n_glia:
            gr = rng.uniform(g_lo, g_hi, n_glia)
            gc = np.stack(
                [
                    rng.uniform(-g_hi, nz - 1 + g_hi, n_glia),
                    rng.uniform(0, h - 1, n_glia),
                    rng.uniform(0, w - 1, n_glia),
                ],
                axis=1,
            )
            gl = p.glia_level + p.level_jitter * rng.standard_normal(n_glia)
            parts.insert(0, (gc, gr, gl, np.zeros(n_glia)))
        if not parts:
            empty = np.zeros(0)
            return {"z": empty, "y": empty, "x": empty, "r": empty, "level": empty, "vessel": empty}
        pos = np.concatenate([q[0] for q in parts])
        rad = np.concatenate([q[1] for q in parts])
        lev = np.concatenate([q[2] for q in parts])
        kind = np.concatenate([q[3] for q in parts])
        order = np.argsort(pos[:, 0], kind="stable")
        return {
            "z": pos[order, 0],
            "y": pos[order, 1],
            "x": pos[order, 2],
            "r": rad[order],
            "level": lev[order],
            "vessel": kind[order] > 0,
            "rmax": np.array([rad.max()]),
        }

    def _vessel_curve(
        self,
        rng: np.random.Generator,
        axis: np.ndarray,
        seed_pt: np.ndarray,
        n_half: int,
        ds: float,
        r0: float,
        m: int,
        flat: bool,
    ) -> tuple[np.ndarray, np.ndarray]:
        """A smooth curve through ``seed_pt`` meandering around ``axis``, with its radii."""
        p = self.params
        n = 2 * n_half + 1
        if flat:  # in-plane vessel: wander mostly within the slice plane
            e1 = _unit(np.array([0.0, -axis[2], axis[1]]))
            e2 = np.cross(axis, e1)
            gains = (1.0, 0.25)
        else:
            e1 = _unit(np.cross(axis, rng.standard_normal(3)))
            e2 = np.cross(axis, e1)
            gains = (1.0, 1.0)
        wob = _smooth_noise(rng, n, 0.12 * m / ds, 2) * p.vessel_meander
        d = _unit(
            axis[None, :]
            + gains[0] * wob[:, :1] * e1[None, :]
            + gains[1] * wob[:, 1:] * e2[None, :]
        )
        pos = np.cumsum(d * ds, axis=0)
        pos += seed_pt - pos[n_half]
        rlo, rhi = self.vessel_radius_range
        logr = math.log(r0) + 0.3 * _smooth_noise(rng, n, 0.08 * m / ds, 1)[:, 0]
        return pos, np.clip(np.exp(logr), rlo, rhi)

    def vessel_truth(self) -> dict[str, Any]:
        """The vessels' analytic centre lines inside the slab, where no soma covers them.

        Returns:
            ``vessels``: one entry per vessel reaching the slab, with ``points`` (K, 3) (z, y, x)
            voxel coordinates of its centre line (0.3 local radii apart), ``radii`` (K,) voxels,
            ``visible`` (K,) (inside the slab and outside every soma), ``length`` (the visible
            polyline's length, voxels) and ``mean_radius`` (length-weighted over that part);
            ``total_length``, ``mean_radius`` over all vessels, and ``crossings``: pairs of
            vessels whose visible tubes overlap (each meeting gives a junction of the skeleton).
        """
        from scipy.spatial import cKDTree

        lim = np.array([self.slices - 1, self.height - 1, self.width - 1], np.float64)
        out, total, rsum = [], 0.0, 0.0
        pts_all, rad_all, owner = [], [], []
        for pos, rad in self.vessel_lines:
            vis = np.all((pos >= 0) & (pos <= lim), axis=1)
            for soma in self.somas:
                near = np.flatnonzero(
                    vis & (np.linalg.norm(pos - soma.center, axis=1) < soma.bound)
                )
                if near.size:
                    d = pos[near] - soma.center
                    u = soma.local(d[:, 0], d[:, 1], d[:, 2])
                    vis[near[soma.inside(u)]] = False
            if not vis.any():
                continue
            both = vis[1:] & vis[:-1]
            seg = np.linalg.norm(np.diff(pos, axis=0), axis=1) * both
            r_mid = 0.5 * (rad[1:] + rad[:-1])
            length = float(seg.sum())
            total += length
            rsum += float((seg * r_mid).sum())
            k = len(out)
            out.append(
                {
                    "points": np.round(pos, 3).tolist(),
                    "radii": np.round(rad, 4).tolist(),
                    "visible": vis.tolist(),
                    "length": round(length, 4),
                    "mean_radius": round(float((seg * r_mid).sum() / length), 4)
                    if length
                    else None,
                }
            )
            pts_all.append(pos[vis])
            rad_all.append(rad[vis])
            owner.append(np.full(int(vis.sum()), k))
        crossings = set()
        if len(pts_all) > 1:
            pts, rad, own = np.concatenate(pts_all), np.concatenate(rad_all), np.concatenate(owner)
            tree = cKDTree(pts)
            for i, j in tree.query_pairs(2.0 * float(rad.max())):
                if own[i] != own[j] and np.linalg.norm(pts[i] - pts[j]) < rad[i] + rad[j]:
                    crossings.add((min(own[i], own[j]), max(own[i], own[j])))
        return {
            "units": "voxels",
            "total_length": round(total, 4),
            "mean_radius": round(rsum / total, 4) if total else None,
            "crossings": len(crossings),
            "vessels": out,
        }

    # -- slice rendering

    def _static_field(self) -> np.ndarray:
        """Ring artefacts and cupping: the same in every slice (cached)."""
        if self._static is not None:
            return self._static
        p = self.params
        h, w = self.shape
        rng = _rng(self.seed, _STREAM_RINGS)
        m = min(h, w)
        cy = (h - 1) / 2 + rng.uniform(-0.02, 0.02) * m
        cx = (w - 1) / 2 + rng.uniform(-0.02, 0.02) * m
        rmax = math.hypot(max(cy, h - 1 - cy), max(cx, w - 1 - cx)) + 2
        grid = np.arange(0, rmax + 1, 0.25)
        prof = -p.cupping * (grid / rmax) ** 2 + p.cupping / 3
        n_sharp = max(8, round(rmax / 20))
        for i in range(n_sharp + 3):
            broad = i >= n_sharp
            r_c = rng.uniform(2, rmax)
            width = rng.uniform(4, 12) if broad else rng.uniform(0.5, 1.6)
            amp = p.rings * rng.choice([-1.0, 1.0]) * np.exp(rng.uniform(np.log(0.3), np.log(1.5)))
            prof += (0.5 if broad else 1.0) * amp * np.exp(-0.5 * ((grid - r_c) / width) ** 2)
        yy = (np.arange(h, dtype=np.float32) - np.float32(cy)) ** 2
        xx = (np.arange(w, dtype=np.float32) - np.float32(cx)) ** 2
        r = np.sqrt(yy[:, None] + xx[None, :])
        self._static = np.interp(r, grid, prof).astype(np.float32)
        return self._static

    def _streaks(self, rng: np.random.Generator, img: np.ndarray) -> None:
        p = self.params
        h, w = img.shape
        m = min(h, w)
        for _ in range(int(rng.poisson(p.streaks))):
            theta = rng.uniform(0, np.pi)
            y0, x0 = rng.uniform(0, h - 1), rng.uniform(0, w - 1)
            width = rng.uniform(0.6, 1.5)
            amp = p.streak_amplitude * rng.choice([-1.0, 1.0]) * rng.uniform(0.4, 1.0)
            length = rng.uniform(0.3, 1.0) * m
            s, c = np.float32(np.sin(theta)), np.float32(np.cos(theta))
            yy = np.arange(h, dtype=np.float32) - np.float32(y0)
            xx = np.arange(w, dtype=np.float32) - np.float32(x0)
            perp = xx[None, :] * s - yy[:, None] * c
            near = np.abs(perp) < 4 * width
            iy, ix = np.nonzero(near)
            along = xx[ix] * c + yy[iy] * s
            val = amp * np.exp(-0.5 * (perp[iy, ix] / width) ** 2 - (along / length) ** 2)
            img[iy, ix] += val.astype(np.float32)

    def render(self, z: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Render slice ``z`` with its vessel mask.

        Args:
            z: slice index in ``0..slices-1``.

        Returns:
            ``(image, labels, vessels)``: float32 intensities (about ``[0, 1]``), uint16 soma
            instance labels (0 = none, k = soma k, the index in :attr:`somas` plus one) and a bool
            mask of vessel pixels not covered by a soma.
        """
        zi = _as_int(z)
        if zi is None or not 0 <= zi < self.slices:
            raise TomosegError(f"slice index must be in 0..{self.slices - 1}, got {z!r}")
        p = self.params
        h, w = self.shape
        level = np.full((h, w), p.background_level, np.float32)
        obj = np.zeros((h, w), bool)
        labels = np.zeros((h, w), np.uint16)
        # Vessels and glia: slices of spheres.
        sp = self._spheres
        if sp["z"].size:
            rmax = float(sp["rmax"][0])
            a, b = np.searchsorted(sp["z"], [zi - rmax, zi + rmax])
            idx = np.arange(a, b)
            dz = zi - sp["z"][idx]
            rr = sp["r"][idx]
            sel = np.abs(dz) < rr
            idx, dz, rr = idx[sel], dz[sel], rr[sel]
            rho = np.sqrt(rr * rr - dz * dz)
            is_vessel = sp["vessel"][idx]
            glia = np.zeros((h, w), bool)
            for mask, j in ((glia, ~is_vessel), (obj, is_vessel)):  # glia first, vessels over them
                _paint_discs(
                    level, mask, sp["y"][idx[j]], sp["x"][idx[j]], rho[j], sp["level"][idx[j]]
                )
            vessels = obj.copy()
            obj |= glia
        else:
            vessels = np.zeros((h, w), bool)
        # Somas: exact perturbed ellipsoids, drawn last (a soma wins over a vessel).
        for k, soma in enumerate(self.somas, start=1):
            if abs(zi - soma.center[0]) > soma.half[0]:
                continue
            box = self._soma_box(soma, zi)
            if box is None:
                continue
            c = soma.center
            ys = np.arange(box[0].start, box[0].stop, dtype=np.float64) - c[1]
            xs = np.arange(box[1].start, box[1].stop, dtype=np.float64) - c[2]
            u = soma.local(float(zi - c[0]), ys[:, None], xs[None, :])
            ins = soma.inside(u)
            if not ins.any():
                continue
            nuc = ins & soma.ball(u, soma.nucleus_off, soma.nucleus_size)
            nol = nuc & soma.ball(u, soma.nucleolus_off, soma.nucleolus_size)
            lev = level[box]
            lev[ins] = soma.level
            lev[nuc] = soma.nucleus_level
            lev[nol] = soma.nucleolus_level
            labels[box][ins] = k
            obj[box] |= ins
            vessels[box] &= ~ins
        # Texture (damped inside objects), shading, blur, fringe.
        img = level
        tex = self._texture.slice(zi, h, w)
        tex[obj] *= np.float32(0.6)
        img += tex
        img += self._shading.slice(zi, h, w)
        if p.psf_sigma > 0:
            img = ndimage.gaussian_filter(img, p.psf_sigma, mode="reflect", truncate=3.0)
        if p.phase_contrast > 0:
            halo = ndimage.gaussian_filter(img, 2.5, mode="reflect", truncate=3.0)
            img += np.float32(p.phase_contrast) * (img - halo)
        # Artefacts and noise.
        rng = _rng(self.seed, _STREAM_SLICE, zi)
        img += self._static_field()
        self._streaks(rng, img)
        img += np.float32(rng.normal(0.0, 0.004))  # beam intensity drift between slices
        sigma = np.sqrt(
            np.float32(p.noise**2) + np.float32(p.photon_noise**2) * np.maximum(img, 0.0)
        )
        img += sigma * rng.standard_normal((h, w), dtype=np.float32)
        return img, labels, vessels

    def render_slice(self, z: int) -> tuple[np.ndarray, np.ndarray]:
        """Render slice ``z``.

        Args:
            z: slice index in ``0..slices-1``.

        Returns:
            ``(image, labels)``: float32 intensities (about ``[0, 1]``, see :func:`to_uint16`) and
            uint16 soma instance labels (0 = none; the class mask is ``labels > 0``).
        """
        img, labels, _ = self.render(z)
        return img, labels


# ----------------------------------------------------------------------------- dataset


def to_uint16(image: np.ndarray) -> np.ndarray:
    """Map phantom intensities ``[0, 1]`` to uint16 (``1.0 -> 65535``), clipping outside values.

    Args:
        image: float array.

    Returns:
        uint16 array of the same shape.
    """
    out = np.clip(np.asarray(image, np.float32), 0.0, 1.0) * np.float32(INTENSITY_SCALE)
    return np.rint(out).astype(np.uint16)


def split_slices(slices: int) -> dict[str, list[int]]:
    """Split slice indices consecutively: ~70 % train, ~15 % val, ~15 % test (>= 1 each).

    Args:
        slices: number of slices (>= 3).

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}`` of slice indices in z order.
    """
    n = _as_int(slices)
    if n is None or n < MIN_SLICES:
        raise TomosegError(f"slices must be an integer >= {MIN_SLICES}, got {slices!r}")
    n_val = max(1, round(0.15 * n))
    n_test = max(1, round(0.15 * n))
    n_train = n - n_val - n_test
    return {
        "train": list(range(n_train)),
        "val": list(range(n_train, n_train + n_val)),
        "test": list(range(n_train + n_val, n)),
    }


def slice_id(z: int, slices: int) -> str:
    """File id of a slice.

    Args:
        z: slice index.
        slices: number of slices of the dataset (ids get more digits beyond 10000 slices).

    Returns:
        ``z0000``, ``z0001``, ...
    """
    return f"z{z:0{max(4, len(str(slices - 1)))}d}"


_ID_FILE = re.compile(r"z\d{4,}\.(tif|png)")


def _remove_stale(root: Path, splits: dict[str, list[str]]) -> None:
    """After an overwrite, delete earlier phantom slice files that are not part of this dataset."""
    for split in SPLITS:
        for sub, ext in (("images", ".tif"), ("masks", ".png")):
            d = root / split / sub
            if not d.is_dir():
                continue
            for f in d.iterdir():
                if _ID_FILE.fullmatch(f.name) and (f.stem not in splits[split] or f.suffix != ext):
                    f.unlink(missing_ok=True)


def generate_phantom(
    out: str | os.PathLike[str],
    shape: tuple[int, int] | str = (1920, 2300),
    slices: int = 12,
    seed: int = 0,
    overwrite: bool = False,
    n_somas: int | None = None,
    params: PhantomParams | dict[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
    label_vessels: bool = False,
) -> dict[str, Any]:
    """Write a synthetic tomography dataset (somas among look-alike vessels) to ``out``.

    Layout: ``dataset.json``; ``{train,val,test}/images/<id>.tif`` (uint16) and
    ``{train,val,test}/masks/<id>.png`` (uint8 class ids, 1 = soma) with ``id = z0000, ...``
    split consecutively in z; ``truth3d/labels.tif`` (multi-page uint16 soma instance labels, one
    page per slice) and ``truth3d/objects.json`` (the somas that reach the slab, with voxel
    counts and centroids measured on the written labels; with ``params={"touching": f}``, each
    clustered soma's ``cluster`` and whether it ``touching`` another soma). Slices are rendered and written one at
    a time; ``dataset.json`` is written last.

    Args:
        out: dataset folder to write (created if needed).
        shape: slice shape ``(H, W)`` or ``"HxW"``; both sides >= 32.
        slices: number of consecutive slices (>= 3).
        seed: random seed (>= 0); the same arguments give byte-identical files.
        overwrite: replace a dataset already in ``out`` (its stale slice files are removed).
        n_somas: number of somas to place in the scene (default: from the soma fraction).
        params: generator knobs (:class:`PhantomParams` or a dict of its fields).
        progress: called as ``progress(done, total)`` after each slice.
        label_vessels: label the vessels too: classes background, soma, vessel (masks 0, 1,
            2), and the 3D truth gains ``truth3d/classes.tif`` (multi-page uint8 class ids) and
            ``truth3d/vessels.json`` (the vessels' centre lines and radii,
            :meth:`PhantomScene.vessel_truth`).

    Returns:
        Summary: ``out``, ``shape``, ``slices``, ``seed``, ``splits`` (slices per split),
        ``somas`` (objects in the 3D truth), ``vessels``, ``soma_fraction`` and
        ``vessel_fraction`` (mean pixel fractions), ``seconds``.

    Raises:
        TomosegError: invalid arguments, or ``out`` already holds a dataset and not ``overwrite``.
    """
    t0 = time.perf_counter()
    _check_args(shape, slices, seed, n_somas)
    params = _resolve_params(params)
    root = prepare_output_dir(out, overwrite, ["dataset.json"])
    scene = PhantomScene(shape, slices, seed, n_somas=n_somas, params=params)
    (root / "dataset.json").unlink(missing_ok=True)  # an interrupted overwrite is incomplete
    h, w = scene.shape
    nz = scene.slices
    split_z = split_slices(nz)
    split_of = {z: s for s, zs in split_z.items() for z in zs}
    ids = {s: [slice_id(z, nz) for z in zs] for s, zs in split_z.items()}
    n_obj = len(scene.somas)
    counts = np.zeros(n_obj + 1, np.int64)
    sums = np.zeros((3, n_obj + 1), np.float64)
    fractions = {"soma": 0.0, "vessel": 0.0}
    class_pages: list[Any] = []  # the truth3d/classes.tif writer, with label_vessels

    def pages() -> Iterator[np.ndarray]:
        for z in range(nz):
            img, labels, vessels = scene.render(z)
            split = split_of[z]
            name = slice_id(z, nz)
            write_image(root / split / "images" / f"{name}.tif", to_uint16(img))
            mask = (labels > 0).astype(np.uint8)
            if label_vessels:
                mask[vessels] = 2
                class_pages[0].write(mask, contiguous=True, photometric="minisblack")
            write_mask(root / split / "masks" / f"{name}.png", mask)
            flat = np.flatnonzero(labels)
            lab = labels.ravel()[flat]
            c = np.bincount(lab, minlength=n_obj + 1)
            counts[:] += c
            sums[0] += c * z
            sums[1] += np.bincount(lab, weights=flat // w, minlength=n_obj + 1)
            sums[2] += np.bincount(lab, weights=flat % w, minlength=n_obj + 1)
            fractions["soma"] += flat.size / (h * w * nz)
            fractions["vessel"] += float(vessels.mean()) / nz
            if progress is not None:
                progress(z + 1, nz)
            yield labels

    def write_stack(tmp: Path) -> None:
        with tifffile.TiffWriter(tmp) as tw:
            tw.write(
                pages(),
                shape=(nz, h, w),
                dtype=np.uint16,
                photometric="minisblack",
                compression="zlib",
                metadata={"axes": "ZYX"},
            )

    if label_vessels:

        def write_both(tmp_classes: Path) -> None:
            with tifffile.TiffWriter(tmp_classes) as cw:
                class_pages.append(cw)
                atomic_write(root / "truth3d" / "labels.tif", write_stack)

        atomic_write(root / "truth3d" / "classes.tif", write_both)
        write_json(root / "truth3d" / "vessels.json", scene.vessel_truth())
    else:
        atomic_write(root / "truth3d" / "labels.tif", write_stack)
    objects = []
    for k, soma in enumerate(scene.somas, start=1):
        if counts[k] == 0:  # cannot happen: every kept soma was found in the slab
            raise RuntimeError(f"phantom soma {k} has no voxels in the rendered slab")
        objects.append(
            {
                "label": k,
                "centroid_zyx": [round(float(s / counts[k]), 3) for s in sums[:, k]],
                "center_zyx": [round(float(v), 3) for v in soma.center],
                "radii": [round(float(v), 3) for v in soma.radii],
                "voxels": int(counts[k]),
                **(
                    {
                        "cluster": scene.cluster_of[id(soma)],
                        "touching": id(soma) in scene.touching_somas,
                    }
                    if id(soma) in scene.cluster_of
                    else {}
                ),
            }
        )
    write_json(
        root / "truth3d" / "objects.json",
        {
            "count": len(objects),
            "labels": "truth3d/labels.tif",
            "connectivity": "each soma is one 26-connected component",
            "touching": sum(bool(o.get("touching")) for o in objects),
            "objects": objects,
        },
    )
    _remove_stale(root, ids)
    write_json(
        root / "dataset.json",
        {
            "name": "phantom",
            "classes": [*CLASSES, "vessel"] if label_vessels else CLASSES,
            "class_of_interest": "soma",
            "modality": "synthetic X-ray tomography (somas among look-alike vessels)",
            "seed": scene.seed,
            "shape": [h, w],
            "slices": nz,
            "intensity_scale": INTENSITY_SCALE,
            "splits": ids,
            "consecutive": True,  # each split is a run of consecutive z slices (2.5D context)
            "truth3d": {
                "labels": "truth3d/labels.tif",
                "objects": "truth3d/objects.json",
                **(
                    {"classes": "truth3d/classes.tif", "vessels": "truth3d/vessels.json"}
                    if label_vessels
                    else {}
                ),
            },
            "params": scene.params.model_dump(),
        },
    )
    return {
        "out": str(root),
        "shape": [h, w],
        "slices": nz,
        "seed": scene.seed,
        "splits": {s: len(v) for s, v in ids.items()},
        "somas": len(objects),
        "touching_somas": sum(bool(o.get("touching")) for o in objects),
        "vessels": scene.n_vessels,
        "soma_fraction": round(fractions["soma"], 4),
        "vessel_fraction": round(fractions["vessel"], 4),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def otsu_baseline(image: np.ndarray) -> np.ndarray:
    """The traditional baseline: a global Otsu threshold (pixels above it are class 1).

    Args:
        image: grayscale array of any numeric dtype.

    Returns:
        uint8 class-id mask of the same shape (all 0 for a constant image).

    Raises:
        TomosegError: empty image or non-finite values.
    """
    arr = np.asarray(image)
    if arr.size == 0:
        raise TomosegError("cannot threshold an empty image")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise TomosegError("cannot threshold an image holding NaN or infinite values")
    if arr.min() == arr.max():
        return np.zeros(arr.shape, np.uint8)
    return (arr > threshold_otsu(arr)).astype(np.uint8)
