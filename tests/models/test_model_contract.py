"""The contract every registered network passes, so a new network is one file plus one registry
line: any input size, padded back to size, K outputs, channels-last, bf16 autocast, eval and
train modes, rebuilt from its hparams."""

from __future__ import annotations

import pytest
import torch

from tomoseg.models.registry import REGISTRY, build_model

SMALL = {"width": 4}  # every network at a small width, its default depth


@pytest.fixture(params=sorted(REGISTRY), scope="module")
def net(request):
    torch.manual_seed(0)
    return build_model(request.param, in_channels=1, num_classes=3, **SMALL).eval()


@pytest.mark.parametrize("hw", [(37, 53), (64, 64), (1, 40), (96, 33)])
def test_any_input_size_gives_k_logits_of_that_size(net, hw):
    x = torch.rand(2, 1, *hw)
    with torch.no_grad():
        y = net(x)
    assert y.shape == (2, 3, *hw)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()


def test_padding_is_cropped_back_not_mixed_in(net):
    """The logits of an image do not depend on the padding the wrapper adds beyond it: the same
    pixels inside a stride-multiple image and a cropped copy agree near the top-left corner."""
    s = net.stride
    x = torch.rand(1, 1, 2 * s, 2 * s)
    with torch.no_grad():
        full = net(x)
        part = net(x[..., : 2 * s - 3, : 2 * s - 5])
    assert part.shape[-2:] == (2 * s - 3, 2 * s - 5)
    # far from the cut, the receptive field sees the same pixels (reflect padding otherwise)
    torch.testing.assert_close(part[..., :4, :4], full[..., :4, :4], atol=1e-3, rtol=1e-3)


def test_channels_last_gives_the_same_logits(net):
    x = torch.rand(1, 1, 48, 40)
    with torch.no_grad():
        ref = net(x)
        cl = net.to(memory_format=torch.channels_last)(
            x.contiguous(memory_format=torch.channels_last)
        )
    net.to(memory_format=torch.contiguous_format)
    torch.testing.assert_close(cl, ref, atol=1e-4, rtol=1e-4)


def test_bf16_autocast_runs_and_stays_close(net):
    x = torch.rand(1, 1, 48, 40)
    with torch.no_grad():
        ref = net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = net(x)
    assert y.shape == ref.shape
    agree = (y.float().argmax(1) == ref.argmax(1)).float().mean()
    assert agree > 0.9


def test_trains_one_step_and_rebuilds_from_hparams(net):
    m = build_model(**net.hparams_dict)
    m.load_state_dict(net.state_dict())
    m.train()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    x, y = torch.rand(2, 1, 32, 32), torch.randint(0, 3, (2, 32, 32))
    loss = torch.nn.functional.cross_entropy(m(x), y)
    loss.backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)
    opt.step()
    assert m.hparams_dict == net.hparams_dict


def test_registry_entries_name_a_source():
    for name, arch in REGISTRY.items():
        assert arch.name == name and arch.source and arch.default_width >= 1


DEEP = sorted(name for name, arch in REGISTRY.items() if arch.deep_supervision)


@pytest.mark.parametrize("name", DEEP)
@pytest.mark.parametrize("hw", [(37, 53), (64, 64)])
def test_deep_supervision_outputs_in_training_only(name, hw):
    """With deep supervision, training mode returns [logits, aux at 1/2, aux at 1/4, ...] (each
    of its share of the input, rounded up), evaluation mode the logits only; the heads are part
    of the weights, so the network is rebuilt from its hparams with them."""
    torch.manual_seed(0)
    net = build_model(name, in_channels=1, num_classes=3, deep_supervision=True, **SMALL)
    assert net.hparams_dict["deep_supervision"] is True
    x = torch.rand(2, 1, *hw)
    outs = net.train()(x)
    assert isinstance(outs, list) and len(outs) >= 2
    for i, o in enumerate(outs):
        assert o.shape == (2, 3, -(-hw[0] // 2**i), -(-hw[1] // 2**i)), (i, o.shape)
    loss = sum(torch.nn.functional.cross_entropy(o, torch.zeros_like(o[:, 0]).long()) for o in outs)
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())
    with torch.no_grad():
        y = net.eval()(x)
    assert isinstance(y, torch.Tensor) and y.shape == (2, 3, *hw)
    copy = build_model(**net.hparams_dict)
    copy.load_state_dict(net.state_dict())  # strict: the heads are there
    with torch.no_grad():
        torch.testing.assert_close(copy.eval()(x), y)


def test_deep_supervision_refused_by_a_network_without_it():
    from tomoseg.errors import TomosegError

    plain = [n for n, a in REGISTRY.items() if not a.deep_supervision]
    assert plain and DEEP
    for name in plain:
        with pytest.raises(
            TomosegError, match=f"deep_supervision=True needs .*model='{name}' has none"
        ):
            build_model(name, deep_supervision=True, **SMALL)
    assert "deep_supervision" not in build_model(DEEP[0], **SMALL).hparams_dict


def test_trains_one_step_in_channels_last_and_bf16(net):
    """The training steps run channels-last under bf16 autocast (the default on CPUs with
    native bf16): forward and backward complete with finite gradients."""
    m = build_model(**net.hparams_dict).train().to(memory_format=torch.channels_last)
    x = torch.rand(2, 1, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)
    torch.nn.functional.cross_entropy(out.float(), torch.zeros(2, 64, 64).long()).backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
