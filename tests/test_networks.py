"""The paper's networks (docs/protocol.md, "Networks"): shapes, sizes and the channel-wise FC layer."""
import pytest
import torch
from torch import nn

from pretrain.networks import (ChannelwiseFC, Discriminator, FeatureContextEncoder, InpaintingGenerator,
                               PointInputUpConv, SubPixelUpConv, WholeInputConv, alexnet_encoder, alexnet_pool5_side)
from bench_runtime.errors import UserError


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def inpainting_generator():
    torch.manual_seed(0)
    return InpaintingGenerator().eval()  # 128 px in, 64 px centre out


def test_feature_context_encoder_shapes_at_227():
    net = FeatureContextEncoder(alexnet_encoder(), 227).eval()
    x = torch.randn(2, 3, 227, 227)
    with torch.no_grad():
        pool5 = net.encoder(x)
        assert pool5.shape == (2, 256, 6, 6)
        upconvs = [m for m in net.decoder if isinstance(m, nn.ConvTranspose2d)]
        assert len(upconvs) == 5
        assert all(m.kernel_size == (5, 5) and m.stride == (2, 2) for m in upconvs)
        seen = []
        hooks = [m.register_forward_hook(lambda mod, inp, out: seen.append(tuple(out.shape[1:])))
                 for m in upconvs]
        out = net(x)
        for hook in hooks:
            hook.remove()
    assert seen == [(128, 11, 11), (64, 21, 21), (64, 41, 41), (32, 81, 81), (3, 161, 161)]
    assert out.shape == (2, 3, 227, 227)
    # ReLU after every up-convolution except the last: the prediction can be negative.
    assert isinstance(net.decoder[-1], nn.ConvTranspose2d)
    assert sum(isinstance(m, nn.ReLU) for m in net.decoder) == 4


@pytest.mark.parametrize("size", [63, 64, 96, 128, 227])
def test_alexnet_pool5_side_matches_forward(size):
    encoder = alexnet_encoder().eval()
    with torch.no_grad():
        pool5 = encoder(torch.zeros(1, 3, size, size))
    side = alexnet_pool5_side(size)
    assert pool5.shape == (1, 256, side, side)
    assert side >= 1


def test_alexnet_pool5_side_known_values():
    assert alexnet_pool5_side(227) == 6
    assert alexnet_pool5_side(128) == 3
    assert alexnet_pool5_side(63) == 1
    assert alexnet_pool5_side(62) == 0


@pytest.mark.parametrize("size", [63, 96])
def test_feature_context_encoder_small_sizes(size):
    net = FeatureContextEncoder(alexnet_encoder(), size).eval()
    fc = net.bottleneck[0]
    assert isinstance(fc, ChannelwiseFC) and fc.side == alexnet_pool5_side(size)
    with torch.no_grad():
        assert net(torch.randn(1, 3, size, size)).shape == (1, 3, size, size)


@pytest.mark.parametrize("size", [62, 32, 1])
def test_alexnet_too_small_is_user_error(size):
    with pytest.raises(UserError, match="too small"):
        FeatureContextEncoder(alexnet_encoder(), size)


def test_channelwise_fc_weight_count():
    fc = ChannelwiseFC(256, 6)
    assert fc.weight.numel() == 256 * 6 ** 4
    assert fc.bias.numel() == 256 * 6 ** 2
    assert sum(p.numel() for p in fc.parameters()) == 256 * 6 ** 4 + 256 * 6 ** 2


def test_channelwise_fc_is_per_channel_linear_map():
    fc = ChannelwiseFC(8, 3)
    x = torch.randn(4, 8, 3, 3)
    with torch.no_grad():
        out = fc(x)
    assert out.shape == x.shape
    for c in range(8):
        expected = x[:, c].reshape(4, 9) @ fc.weight[c].detach() + fc.bias[c].detach()
        torch.testing.assert_close(out[:, c].reshape(4, 9), expected)


@pytest.mark.parametrize("channel", [0, 77, 255])
def test_channelwise_fc_channels_do_not_mix(channel):
    fc = ChannelwiseFC(256, 6)
    x = torch.randn(3, 256, 6, 6)
    changed = x.clone()
    changed[:, channel] = torch.randn(3, 6, 6) * 5
    with torch.no_grad():
        before, after = fc(x), fc(changed)
    others = [c for c in range(256) if c != channel]
    torch.testing.assert_close(after[:, others], before[:, others], rtol=0, atol=1e-6)
    assert (after[:, channel] - before[:, channel]).abs().max() > 1e-2


def test_channelwise_fc_gradient_stays_in_channel():
    fc = ChannelwiseFC(16, 4)
    x = torch.randn(2, 16, 4, 4, requires_grad=True)
    fc(x)[:, 5].sum().backward()
    grad = x.grad.abs().sum(dim=(0, 2, 3))
    assert grad[5] > 0
    assert torch.count_nonzero(grad) == 1


def test_inpainting_generator_centre_output(inpainting_generator):
    net = inpainting_generator
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        code = net.encoder(x)
        out = net(x)
    assert code.shape == (2, 4000, 1, 1)
    assert out.shape == (2, 3, 64, 64)
    assert out.abs().max() <= 1  # tanh
    # Encoder: five 4x4 stride-2 convs with widths 64, 64, 128, 256, 512, then the 4x4 bottleneck conv.
    convs = [m for m in net.encoder if isinstance(m, nn.Conv2d)]
    assert [m.out_channels for m in convs] == [64, 64, 128, 256, 512, 4000]
    assert all(m.kernel_size == (4, 4) for m in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.encoder) == 5  # all but the first conv


def test_inpainting_generator_full_output():
    net = InpaintingGenerator(128, output_size=128).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, 128, 128))
    assert out.shape == (1, 3, 128, 128)


@pytest.mark.parametrize("size", [96, 64, 227])
def test_inpainting_generator_other_input_size_is_user_error(size):
    with pytest.raises(UserError, match="128"):
        InpaintingGenerator(image_size=size)


def test_inpainting_generator_bad_output_size_is_user_error():
    with pytest.raises(UserError):
        InpaintingGenerator(128, output_size=96)


@pytest.mark.parametrize("size", [64, 128])
def test_discriminator_one_logit_per_image(size):
    net = Discriminator(size)
    x = torch.randn(3, 3, size, size)
    logits = net(x)
    assert logits.shape == (3,)
    net.eval()
    with torch.no_grad():
        single = net(x[:1])
    assert single.shape == (1,)


def test_discriminator_layout_at_64():
    net = Discriminator(64)
    convs = [m for m in net.net if isinstance(m, nn.Conv2d)]
    assert [m.out_channels for m in convs] == [64, 128, 256, 512, 1]
    assert [m.stride for m in convs[:-1]] == [(2, 2)] * 4
    assert convs[-1].kernel_size == (4, 4)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.net) == 3  # not after the first conv


def _assert_computes_the_same(layer, plain, shape):
    """`layer` (a faster form) and `plain` (the torch layer it stands for), given the same
    parameters, give the same output and gradients on a float64 input of `shape`."""
    plain.load_state_dict(layer.state_dict())
    layer.double(), plain.double()
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    out, expected = layer(x), plain(x)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    upstream = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x, *layer.parameters()], upstream)
    expected_grads = torch.autograd.grad(expected, [x, *plain.parameters()], upstream)
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-12)
    return out


@pytest.mark.parametrize("bias", [False, True])
def test_subpixel_upconv_equals_the_transposed_convolution(bias):
    """Same parameters, output and gradients as nn.ConvTranspose2d(k 4, stride 2, padding 1), on a
    non-square input."""
    out = _assert_computes_the_same(SubPixelUpConv(5, 3, bias=bias), nn.ConvTranspose2d(5, 3, 4, 2, 1, bias=bias),
                                    (2, 5, 7, 6))
    assert out.shape == (2, 3, 14, 12)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", ["matmul", "other"])
def test_matmul_forms_equal_the_convolutions(bias, shape):
    """WholeInputConv (kernel = input) and PointInputUpConv (1x1 input) compute what nn.Conv2d and
    nn.ConvTranspose2d compute, gradients included; other input sizes take the convolution path."""
    _assert_computes_the_same(WholeInputConv(6, 5, 4, bias=bias), nn.Conv2d(6, 5, 4, bias=bias),
                              (3, 6, 4, 4) if shape == "matmul" else (2, 6, 7, 5))
    _assert_computes_the_same(PointInputUpConv(6, 5, 4, bias=bias), nn.ConvTranspose2d(6, 5, 4, bias=bias),
                              (3, 6, 1, 1) if shape == "matmul" else (2, 6, 3, 2))


def test_inpainting_bottleneck_and_discriminator_end_run_as_matmuls(inpainting_generator):
    assert isinstance(inpainting_generator.encoder[-3], WholeInputConv)
    assert isinstance(inpainting_generator.decoder[0], PointInputUpConv)
    assert isinstance(Discriminator(64).net[-1], WholeInputConv)
