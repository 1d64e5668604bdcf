"""Tests of tomoseg.models: SegNet structure, padding wrapper, factory, encoder initialisation."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from tomoseg.errors import TomosegError
from tomoseg.models.layers import PadToStride
from tomoseg.models.registry import build_model, count_parameters
from tomoseg.models.segnet import VGG16_BN_CONV_INDICES, SegNet, load_encoder_weights

VGG_CHANNELS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)


def _convs(module: nn.Module, kernel: int) -> list[nn.Conv2d]:
    return [
        m
        for m in module.modules()
        if isinstance(m, nn.Conv2d) and m.kernel_size == (kernel, kernel)
    ]


def test_segnet_has_13_encoder_and_13_decoder_convs_and_a_1x1_head():
    net = SegNet(in_channels=1, num_classes=3, width=4)
    assert len(_convs(net.encoder, 3)) == 13
    assert len(_convs(net.decoder, 3)) == 13
    assert [len(b) for b in net.encoder] == [2, 2, 3, 3, 3]
    assert [len(b) for b in net.decoder] == [3, 3, 3, 2, 2]
    assert len(_convs(net, 3)) == 26
    assert len(_convs(net, 1)) == 1 and net.head.out_channels == 3
    assert [c.out_channels for c in _convs(net.encoder, 3)] == [4, 4, 8, 8, 16, 16, 16] + [32] * 6
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 26


def test_segnet_pools_with_indices_and_unpools_with_them():
    net = SegNet(width=4).eval()
    assert isinstance(net.pool, nn.MaxPool2d) and net.pool.return_indices
    assert isinstance(net.unpool, nn.MaxUnpool2d)
    calls = {"pool": 0, "unpool": []}

    def on_pool(mod, inp, out):
        calls["pool"] += 1

    def on_unpool(mod, inp, out):
        calls["unpool"].append(out)

    net.pool.register_forward_hook(on_pool)
    net.unpool.register_forward_hook(on_unpool)
    with torch.no_grad():
        net(torch.randn(1, 1, 64, 64))
    assert calls["pool"] == 5 and len(calls["unpool"]) == 5
    # Max-unpooling writes each value back at its max position: at most 1 non-zero per 2x2 cell.
    out = calls["unpool"][-1]
    cells = (out != 0).float().unfold(2, 2, 2).unfold(3, 2, 2).sum(dim=(-1, -2))
    assert cells.max() <= 1
    assert out.shape[-2:] == (64, 64)


@pytest.mark.parametrize("name", ["segnet", "unet"])
@pytest.mark.parametrize("hw", [(37, 53), (100, 130), (5, 7)])
def test_any_input_size_gives_logits_of_that_size(name, hw):
    model = build_model(name, in_channels=1, num_classes=3, width=4, depth=5).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, *hw))
    assert out.shape == (2, 3, *hw)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name,depth,stride", [("segnet", 5, 32), ("unet", 5, 16), ("unet", 3, 4)])
def test_stride_arch_and_no_padding_effect_on_multiples(name, depth, stride):
    model = build_model(name, width=4, depth=depth).eval()
    assert isinstance(model, PadToStride)
    assert model.stride == stride and model.arch == name
    x = torch.randn(1, 1, 2 * stride, 3 * stride)
    with torch.no_grad():
        assert torch.equal(model(x), model.net(x))


def test_unet_is_monai_with_requested_channels():
    from monai.networks.nets import UNet

    model = build_model("UNet", width=4, depth=3)
    assert isinstance(model.net, UNet)
    assert model.net.channels == (4, 8, 16) and model.net.strides == (2, 2)
    assert build_model("unet").hparams_dict["width"] == 32
    assert build_model("segnet", width=None).hparams_dict["width"] == 64


@pytest.mark.parametrize("name", ["segnet", "unet"])
def test_hparams_rebuild_same_model(name):
    model = build_model(name.upper(), in_channels=2, num_classes=4, width=4, depth=5)
    assert set(model.hparams_dict) == {"name", "in_channels", "num_classes", "width", "depth"}
    again = build_model(**model.hparams_dict)
    assert count_parameters(again) == count_parameters(model) > 0
    again.load_state_dict(model.state_dict())  # same names and shapes
    assert again.arch == model.arch and again.stride == model.stride


def test_count_parameters_matches_paper_size():
    # SegNet with VGG16 widths has about 29.5 M parameters (Badrinarayanan et al., table 6).
    assert 29_000_000 < count_parameters(SegNet(in_channels=3, num_classes=11)) < 30_000_000


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "deeplab"},
        {"name": "segnet", "depth": 4},
        {"name": "unet", "depth": 1},
        {"name": "unet", "width": 0},
        {"name": "unet", "num_classes": 1},
        {"name": "segnet", "in_channels": 0},
    ],
)
def test_bad_build_arguments_raise(kwargs):
    with pytest.raises(TomosegError):
        build_model(**kwargs)


def test_unknown_model_message():
    with pytest.raises(
        TomosegError, match=r"unknown model 'foo' \(choose segnet, unet, unet-resenc\)"
    ):
        build_model("foo")


# ----------------------------------------------------------------------------- encoder weights


def _fake_vgg16_bn() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    state: dict[str, torch.Tensor] = {}
    c_in = 3
    for idx, c in zip(VGG16_BN_CONV_INDICES, VGG_CHANNELS, strict=True):
        state[f"features.{idx}.weight"] = torch.randn(c, c_in, 3, 3, generator=gen)
        state[f"features.{idx}.bias"] = torch.randn(c, generator=gen)
        state[f"features.{idx + 1}.weight"] = torch.rand(c, generator=gen)
        state[f"features.{idx + 1}.bias"] = torch.randn(c, generator=gen)
        state[f"features.{idx + 1}.running_mean"] = torch.randn(c, generator=gen)
        state[f"features.{idx + 1}.running_var"] = torch.rand(c, generator=gen) + 0.5
        state[f"features.{idx + 1}.num_batches_tracked"] = torch.tensor(7)
        c_in = c
    state["classifier.6.weight"] = torch.randn(10, 8, generator=gen)  # ignored
    return state


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("vgg") / "vgg16_bn.safetensors"
    state = _fake_vgg16_bn()
    save_file(state, str(path))
    return path, state


def test_load_vgg16_bn_into_segnet_encoder(vgg_file):
    path, state = vgg_file
    model = build_model("segnet", in_channels=1, num_classes=2)
    decoder_before = model.net.decoder[0][0].conv.weight.clone()
    n = load_encoder_weights(model, path)
    assert n == 13 * 7
    units = model.net.encoder_layers()
    for k, (unit, idx) in enumerate(zip(units, VGG16_BN_CONV_INDICES, strict=True)):
        w = state[f"features.{idx}.weight"]
        expected = w.sum(dim=1, keepdim=True) if k == 0 else w
        assert torch.equal(unit.conv.weight, expected)
        assert torch.equal(unit.conv.bias, state[f"features.{idx}.bias"])
        assert torch.equal(unit.bn.weight, state[f"features.{idx + 1}.weight"])
        assert torch.equal(unit.bn.running_var, state[f"features.{idx + 1}.running_var"])
    assert units[0].conv.weight.shape == (64, 1, 3, 3)
    assert torch.equal(model.net.decoder[0][0].conv.weight, decoder_before)


def test_load_vgg16_bn_keeps_rgb_for_three_channel_model(vgg_file):
    path, state = vgg_file
    net = SegNet(in_channels=3, num_classes=2)
    load_encoder_weights(net, path)
    assert torch.equal(net.encoder[0][0].conv.weight, state["features.0.weight"])


def test_load_vgg16_bn_width_mismatch_names_layer(vgg_file):
    path, _ = vgg_file
    model = build_model("segnet", width=8)
    with pytest.raises(TomosegError, match=r"encoder\.0\.0\.conv\.weight.*width=64"):
        load_encoder_weights(model, path)


def test_load_encoder_weights_refuses_unet(vgg_file):
    path, _ = vgg_file
    with pytest.raises(TomosegError, match="segnet only"):
        load_encoder_weights(build_model("unet", width=4), path)


def test_load_own_checkpoint_state_dict(tmp_path):
    src = build_model("segnet", width=4)
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in src.state_dict().items()}}, path)
    dst = build_model("segnet", width=4)
    head_before = dst.net.head.weight.clone()
    assert load_encoder_weights(dst, path) == 13 * 7
    for a, b in zip(src.net.encoder_layers(), dst.net.encoder_layers(), strict=True):
        assert torch.equal(a.conv.weight, b.conv.weight)
        assert torch.equal(a.bn.running_mean, b.bn.running_mean)
    assert torch.equal(dst.net.head.weight, head_before)
    assert not torch.equal(dst.net.head.weight, src.net.head.weight)


def test_load_encoder_weights_bad_files(tmp_path):
    model = build_model("segnet", width=4)
    with pytest.raises(TomosegError, match="not found"):
        load_encoder_weights(model, tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a tensor file")
    with pytest.raises(TomosegError, match="cannot read"):
        load_encoder_weights(model, junk)
    other = tmp_path / "other.safetensors"
    save_file({"foo.weight": torch.zeros(2)}, str(other))
    with pytest.raises(TomosegError, match="neither a VGG16-BN"):
        load_encoder_weights(model, other)
