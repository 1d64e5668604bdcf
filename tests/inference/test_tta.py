"""Test-time augmentation: the eight symmetries invert exactly, and averaging is what it says."""

from __future__ import annotations

import pytest
import torch

from tomoseg.errors import TomosegError
from tomoseg.inference.tta import _OPS, PRESETS, TRANSFORMS, parse_tta, with_tta


@pytest.mark.parametrize("name", TRANSFORMS)
def test_each_transform_is_inverted_exactly(name):
    x = torch.arange(2 * 3 * 5 * 7, dtype=torch.float32).reshape(2, 3, 5, 7)
    fwd, inv = _OPS[name]
    assert torch.equal(inv(fwd(x)), x)


def test_the_eight_are_distinct_symmetries():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    outs = {tuple(_OPS[n][0](x).flatten().tolist()) for n in TRANSFORMS}
    assert len(outs) == 8


def test_equivariant_network_is_unchanged_and_tta_averages_softmax():
    # a per-pixel network (1x1 conv) is equivariant: TTA returns its own log-softmax
    net = torch.nn.Conv2d(1, 3, 1)
    x = torch.rand(2, 1, 6, 9)
    with torch.no_grad():
        ref = torch.log_softmax(net(x), 1)
        out = with_tta(net, PRESETS["all"])(x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)

    # a position-dependent "network": the average of the mapped-back softmaxes, by hand
    bias = torch.randn(1, 2, 4, 4)

    def f(t):
        return t.repeat(1, 2, 1, 1) + bias

    x = torch.rand(1, 1, 4, 4)
    got = with_tta(f, ("identity", "flip_x"))(x)
    manual = (torch.softmax(f(x), 1) + torch.softmax(f(x.flip(-1)).flip(-1), 1)) / 2
    torch.testing.assert_close(got.exp(), manual)


def test_identity_only_is_the_function_itself():
    def f(t):
        return t

    assert with_tta(f, parse_tta("none")) is f


def test_parse():
    assert parse_tta(True) == PRESETS["all"] and len(parse_tta("all")) == 8
    assert parse_tta(None) == ("identity",) and parse_tta(False) == ("identity",)
    assert parse_tta("flips") == ("identity", "flip_y", "flip_x", "rot180")
    assert parse_tta("identity, rot90,rot90") == ("identity", "rot90")
    for bad in ("spin", "identity,spin", ""):
        with pytest.raises(TomosegError, match="tta: unknown transform"):
            parse_tta(bad)
