import functools
import re

import pytest
import torch
from torch import nn

from permcodec.errors import SpecError
from permcodec.models import MODELS, build_model, count_weights, same_padded_conv

CIFAR = (3, 32, 32)
MNIST = (1, 28, 28)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)

# Conv/Linear weight elements, worked out by hand from the notebooks' layer sizes
# and matched by count_weights.
WEIGHT_COUNTS = {
    "mlp": 784 * 300 + 300 * 100 + 100 * 10,  # 266_200
    "conv2": 4_300_992,
    "conv4": 2_425_024,
    "conv7": 325_152,
    "conv13": 14_710_464 + 512 * 512 + 512 * 10,  # 13 convs, then dense 512, dense 10
    "resnet50": 754_736,  # with biases and BN: 760_266 parameters
}

# Dropout rates in forward order, as in the notebooks.
DROPOUT_RATES = {
    "mlp": [],
    "conv2": [0.3, 0.5, 0.5],
    "conv4": [0.3, 0.4, 0.5, 0.5],
    "conv7": [0.4, 0.4, 0.4],
    "conv13": [0.3] + [0.4] * 7 + [0.5, 0.5],
    "resnet50": [],
}


@functools.cache
def designed_model(name):
    """The model `name` for its designed input shape; for checks that only read it."""
    return build_model(name, MODELS[name].input_shape, 10)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("num_classes", [10, 7])
def test_forward_gives_one_logit_per_class(name, num_classes):
    input_shape = MODELS[name].input_shape
    model = build_model(name, input_shape, num_classes)
    for training in (True, False):
        model.train(training)
        assert model(torch.randn(2, *input_shape)).shape == (2, num_classes)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_weight_counts(name):
    assert count_weights(designed_model(name)) == WEIGHT_COUNTS[name]


def test_weight_counts_match_the_paper():
    assert WEIGHT_COUNTS["conv13"] == pytest.approx(14.9e6, rel=0.02)
    assert WEIGHT_COUNTS["resnet50"] == pytest.approx(0.76e6, rel=0.02)


def test_count_weights_skips_biases_and_batch_norm():
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(4, 5))
    assert count_weights(model) == 2 * 3 * 3 * 3 + 4 * 5


@pytest.mark.parametrize("name", sorted(MODELS))
def test_dropout_rates_follow_the_notebooks(name):
    rates = [m.p for m in designed_model(name).modules() if isinstance(m, nn.Dropout)]
    assert rates == DROPOUT_RATES[name]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_batch_norm_uses_keras_defaults(name):
    for m in designed_model(name).modules():
        if isinstance(m, BATCH_NORMS):
            assert (m.momentum, m.eps) == (0.01, 1e-3)


def test_batch_norm_only_in_the_cifar_models():
    for name in MODELS:
        modules = designed_model(name).modules()
        has_bn = any(isinstance(m, BATCH_NORMS) for m in modules)
        assert has_bn == (name not in ("conv7", "mlp")), name


def test_permute_bias_only_for_conv7():
    assert {name: cls.permute_bias for name, cls in MODELS.items()} == {
        "mlp": False,
        "conv2": False,
        "conv4": False,
        "conv7": True,
        "conv13": False,
        "resnet50": False,
    }


def test_designed_input_shapes():
    assert {name: cls.input_shape for name, cls in MODELS.items()} == {
        "mlp": MNIST,
        "conv2": CIFAR,
        "conv4": CIFAR,
        "conv7": MNIST,
        "conv13": CIFAR,
        "resnet50": CIFAR,
    }


def test_strided_same_padding_puts_the_odd_pixel_bottom_right():
    # Keras/TF 'same' with stride 2 on an even input pads 0 before and 1 after, so a
    # 3x3 kernel that picks its centre samples the odd rows and columns.
    conv = same_padded_conv(1, 1, 3, stride=2)
    conv_layer = [m for m in conv.modules() if isinstance(m, nn.Conv2d)][0]
    with torch.no_grad():
        conv_layer.weight.zero_()
        conv_layer.weight[0, 0, 1, 1] = 1.0
        conv_layer.bias.zero_()
        x = torch.arange(64.0).reshape(1, 1, 8, 8)
        assert torch.equal(conv(x), x[..., 1::2, 1::2])


def test_stride_one_same_padding_keeps_the_size():
    assert same_padded_conv(4, 5, 3)(torch.randn(1, 4, 9, 9)).shape == (1, 5, 9, 9)


@pytest.mark.parametrize("input_shape", [CIFAR, MNIST, (5,), [2, 4, 4]])
def test_mlp_takes_any_input_shape(input_shape):
    model = build_model("mlp", input_shape, 3)
    assert model(torch.randn(2, *input_shape)).shape == (2, 3)


@pytest.mark.parametrize(
    ("name", "expected", "given"),
    [
        ("conv13", CIFAR, MNIST),
        ("resnet50", CIFAR, MNIST),
        ("conv7", MNIST, CIFAR),
        ("conv2", CIFAR, (3, 28, 28)),
    ],
)
def test_wrong_input_shape(name, expected, given):
    message = f"model '{name}' expects input shape {expected} (C, H, W), got {given}"
    with pytest.raises(SpecError, match=re.escape(message)):
        build_model(name, given, 10)


def test_unknown_model_lists_the_known_ones():
    message = "unknown model 'vgg16'; known models: mlp, conv2, conv4, conv7, conv13, resnet50"
    with pytest.raises(SpecError, match=re.escape(message)):
        build_model("vgg16", CIFAR, 10)


@pytest.mark.parametrize(
    "input_shape", [(), (3, 0, 32), (3, -1, 32), (3.0, 32, 32), "3x32x32", None, (True, 2)]
)
def test_bad_input_shape(input_shape):
    with pytest.raises(SpecError, match="input_shape must be a non-empty tuple of positive ints"):
        build_model("mlp", input_shape, 10)


@pytest.mark.parametrize("num_classes", [0, -3, 2.0, True, "10"])
def test_bad_num_classes(num_classes):
    message = f"num_classes must be a positive int, got {num_classes!r}"
    with pytest.raises(SpecError, match=re.escape(message)):
        build_model("conv2", CIFAR, num_classes)
