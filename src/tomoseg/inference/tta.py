"""Test-time augmentation (TTA): average the softmax over flipped and rotated copies of the input.

The eight symmetries of the square (the dihedral group D4: identity, three quarter turns, and the
four reflections) map a tile to a tile of the same content, so a network trained with flips and
90-degree rotations (tomoseg's default augmentation) sees each pixel eight ways. Each copy's
logits are mapped back by the inverse transform, turned into probabilities by a softmax, and
averaged; the result is returned as log-probabilities so that it can take the place of logits
(the decision rule's offsets still add to it, and its softmax is the averaged probability).
nnU-Net does the same with mirroring ("test-time mirroring"). Written here because it is a
few lines around any callable (torch module, ONNX or OpenVINO session) and MONAI's TTA classes
target random transforms and dictionaries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from tomoseg.errors import TomosegError

#: name -> (forward, inverse) on the last two axes of a (B, C, H, W) tensor.
_OPS: dict[
    str, tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]
] = {
    "identity": (lambda x: x, lambda y: y),
    "flip_y": (lambda x: x.flip(-2), lambda y: y.flip(-2)),
    "flip_x": (lambda x: x.flip(-1), lambda y: y.flip(-1)),
    "rot180": (lambda x: x.flip(-2, -1), lambda y: y.flip(-2, -1)),
    "rot90": (lambda x: x.rot90(1, (-2, -1)), lambda y: y.rot90(-1, (-2, -1))),
    "rot270": (lambda x: x.rot90(-1, (-2, -1)), lambda y: y.rot90(1, (-2, -1))),
    "transpose": (lambda x: x.transpose(-2, -1), lambda y: y.transpose(-2, -1)),
    "antitranspose": (
        lambda x: x.rot90(1, (-2, -1)).flip(-1),
        lambda y: y.flip(-1).rot90(-1, (-2, -1)),
    ),
}
TRANSFORMS = tuple(_OPS)
PRESETS = {
    "none": ("identity",),
    "flips": ("identity", "flip_y", "flip_x", "rot180"),
    "all": TRANSFORMS,
}


def parse_tta(spec: str | bool | Sequence[str] | None) -> tuple[str, ...]:
    """The transforms of a TTA setting.

    Args:
        spec: ``None``/``False``/``"none"`` (no TTA), ``True``/``"all"`` (the 8 symmetries),
            ``"flips"`` (identity, the two flips and the half turn), or a comma-separated list /
            sequence of names from :data:`TRANSFORMS`.

    Returns:
        Names in the order given, without repeats; ``("identity",)`` means no TTA.

    Raises:
        TomosegError: an unknown name (the message lists the valid ones).
    """
    if spec is None or spec is False:
        return PRESETS["none"]
    if spec is True:
        return PRESETS["all"]
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key in PRESETS:
            return PRESETS[key]
        names = [s.strip().lower() for s in key.split(",") if s.strip()]
    else:
        names = [str(s).strip().lower() for s in spec]
    bad = [n for n in names if n not in _OPS]
    if bad or not names:
        raise TomosegError(
            f"tta: unknown transform {bad[0] if bad else spec!r} (use none, flips, all, or a "
            f"comma-separated list of {', '.join(TRANSFORMS)})"
        )
    return tuple(dict.fromkeys(names))


def with_tta(
    fn: Callable[[torch.Tensor], torch.Tensor], transforms: Sequence[str]
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Wrap ``fn`` ((B, C, H, W) -> (B, K, H, W) logits) so that it returns the log of the softmax
    averaged over ``transforms``; with only ``identity`` it returns ``fn`` itself (no cost).

    Transforms that turn the tile (``rot90``, ``transpose``, ...) swap H and W: ``fn`` must accept
    any size (tomoseg's networks pad to their stride).
    """
    names = tuple(transforms)
    if names == ("identity",):
        return fn
    ops = [_OPS[n] for n in names]

    def averaged(x: torch.Tensor) -> torch.Tensor:
        total = None
        for fwd, inv in ops:
            p = torch.softmax(inv(fn(fwd(x))).float(), dim=1)
            total = p if total is None else total + p
        assert total is not None
        return torch.log((total / len(ops)).clamp_min(1e-12))

    return averaged
