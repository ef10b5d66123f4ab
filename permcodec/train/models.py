"""The networks of the LaPerm paper (Qiu & Suda, "Train-by-Reconnect", NeurIPS 2020).

Ported to PyTorch from the Keras notebooks of github.com/ihsuy/Train-by-Reconnect
(notebooks/Conv2, Conv4, Conv7, Conv13, ResNet50), plus a small MLP:

    from permcodec.models import build_model, count_weights
    model = build_model("conv4", (3, 32, 32), num_classes=10)
    count_weights(model)  # 2_425_024

Models return logits: the notebooks end in a softmax, which here belongs to the loss.
Initialization is torch's default; whoever trains or decodes a model sets the values.
"""

import math
from numbers import Integral

import torch
from torch import nn

from ..errors import SpecError
from ..init.modules import WEIGHTED_LAYERS
from .config import MODEL_NAMES

# Keras BatchNormalization keeps moving = 0.99 * moving + 0.01 * batch, with eps 1e-3.
# torch's momentum is the weight of the batch statistic, so Keras' 0.99 is torch's 0.01.
BN_MOMENTUM = 0.01
BN_EPS = 1e-3


def batch_norm_2d(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def batch_norm_1d(features: int) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(features, eps=BN_EPS, momentum=BN_MOMENTUM)


def same_padded_conv(
    in_channels: int, out_channels: int, kernel_size: int, stride: int = 1
) -> nn.Module:
    """A Conv2d padded like Keras padding='same', for inputs divisible by the stride.

    Keras pads kernel_size - stride in total and puts the odd pixel at the bottom and
    right; torch's symmetric padding would sample a strided conv one pixel off.
    """
    total = max(kernel_size - stride, 0)
    before, after = total // 2, total - total // 2
    if before == after:
        return nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=before)
    return nn.Sequential(
        nn.ZeroPad2d((before, after, before, after)),
        nn.Conv2d(in_channels, out_channels, kernel_size, stride),
    )


# The VGG-style trunk shared by Conv2, Conv4 and Conv13: Conv2 is its first block,
# Conv4 its first two. Each conv is 3x3 'same' -> ReLU -> BN, then the dropout rate
# given (None: no dropout); "pool" is a 2x2 max-pool.
VGG_TRUNK = [
    (64, 0.3), (64, None), "pool",
    (128, 0.4), (128, None), "pool",
    (256, 0.4), (256, 0.4), (256, None), "pool",
    (512, 0.4), (512, 0.4), (512, None), "pool",
    (512, 0.4), (512, 0.4), (512, None), "pool",
]  # fmt: skip


def vgg_features(layers: list, in_channels: int = 3) -> nn.Sequential:
    modules = []
    for layer in layers:
        if layer == "pool":
            modules.append(nn.MaxPool2d(2))
            continue
        out_channels, dropout = layer
        conv = same_padded_conv(in_channels, out_channels, 3)
        modules += [conv, nn.ReLU(), batch_norm_2d(out_channels)]
        if dropout is not None:
            modules.append(nn.Dropout(dropout))
        in_channels = out_channels
    return nn.Sequential(*modules)


def two_dense_256_head(in_features: int, num_classes: int) -> nn.Sequential:
    # Dropout comes before BN after the first dense layer and after it after the second,
    # as in the notebooks.
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_features, 256), nn.ReLU(), nn.Dropout(0.5), batch_norm_1d(256),
        nn.Linear(256, 256), nn.ReLU(), batch_norm_1d(256), nn.Dropout(0.5),
        nn.Linear(256, num_classes),
    )  # fmt: skip


class SmallVGG(nn.Module):
    """The first `trunk_length` layers of VGG_TRUNK, then dense 256, 256, classes: Conv2 and Conv4."""

    input_shape = (3, 32, 32)
    permute_bias = False
    trunk_length: int  # convs and pools taken from VGG_TRUNK
    flat_features: int  # the size of the trunk's output, flattened

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = vgg_features(VGG_TRUNK[: self.trunk_length])
        self.classifier = two_dense_256_head(self.flat_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class Conv2(SmallVGG):
    """CIFAR-10: conv64, conv64, max-pool, dense 256, dense 256, dense classes."""

    trunk_length, flat_features = 3, 64 * 16 * 16


class Conv4(SmallVGG):
    """CIFAR-10: (conv64 x2, max-pool, conv128 x2, max-pool), dense 256, 256, classes."""

    trunk_length, flat_features = 6, 128 * 8 * 8


class Conv13(nn.Module):
    """CIFAR-10, VGG-16 style: 13 convs (64 x2, 128 x2, 256 x3, 512 x3, 512 x3, each
    group max-pooled), dense 512, dense classes."""

    input_shape = (3, 32, 32)
    permute_bias = False

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = vgg_features(VGG_TRUNK)
        self.classifier = nn.Sequential(
            nn.Dropout(0.5),
            nn.Flatten(),
            nn.Linear(512, 512), nn.ReLU(), batch_norm_1d(512), nn.Dropout(0.5),
            nn.Linear(512, num_classes),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class Conv7(nn.Module):
    """MNIST, no BN: conv32 3x3, 3x3, 5x5/2; conv64 3x3, 3x3, 5x5/2; conv128 4x4; dense.

    The paper trains its biases by permutation too (skip_bias=False in the notebook).
    """

    input_shape = (1, 28, 28)
    permute_bias = True

    def __init__(self, num_classes: int = 10):
        super().__init__()
        # Unpadded convs are Keras 'valid'; sizes go 28, 26, 24, 12, 10, 8, 4, 1.
        self.layers = nn.Sequential(
            nn.Conv2d(1, 32, 3), nn.ReLU(),
            nn.Conv2d(32, 32, 3), nn.ReLU(),
            same_padded_conv(32, 32, 5, stride=2), nn.ReLU(),
            nn.Dropout(0.4),
            nn.Conv2d(32, 64, 3), nn.ReLU(),
            nn.Conv2d(64, 64, 3), nn.ReLU(),
            same_padded_conv(64, 64, 5, stride=2), nn.ReLU(),
            nn.Dropout(0.4),
            nn.Conv2d(64, 128, 4), nn.ReLU(),
            nn.Flatten(),
            nn.Dropout(0.4),
            nn.Linear(128, num_classes),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ResidualBlock(nn.Module):
    """Keras resnet_v1 block: conv-BN-ReLU, conv-BN, add the shortcut, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = same_padded_conv(in_channels, out_channels, 3, stride)
        self.bn1 = batch_norm_2d(out_channels)
        self.conv2 = same_padded_conv(out_channels, out_channels, 3)
        self.bn2 = batch_norm_2d(out_channels)
        # Where the shape changes, resnet_v1 projects the shortcut with a bare 1x1 conv (no BN).
        if stride != 1 or in_channels != out_channels:
            self.shortcut = same_padded_conv(in_channels, out_channels, 1, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(self.shortcut(x) + y)


class ResNet50(nn.Module):
    """CIFAR-10 ResNet v1 of depth 6n + 2 = 50 (the keras.io cifar10_resnet example, n = 8),
    not torchvision's ImageNet ResNet-50: a 16-filter stem conv, three stacks of 8 blocks
    with 16, 32, 64 filters (the 2nd and 3rd stacks halve the size), 8x8 average pool, dense.
    The convs keep their biases even before BN: the notebook leaves Keras' use_bias on.
    """

    input_shape = (3, 32, 32)
    permute_bias = False
    blocks_per_stack = 8

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(same_padded_conv(3, 16, 3), batch_norm_2d(16), nn.ReLU())
        blocks, in_channels = [], 16
        for stack, channels in enumerate((16, 32, 64)):
            for index in range(self.blocks_per_stack):
                stride = 2 if stack > 0 and index == 0 else 1
                blocks.append(ResidualBlock(in_channels, channels, stride))
                in_channels = channels
        self.blocks = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(nn.AvgPool2d(8), nn.Flatten(), nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.blocks(self.stem(x)))


class MLP(nn.Module):
    """Any input shape: flatten, dense 300, dense 100, dense classes (ReLU between)."""

    input_shape = (1, 28, 28)
    permute_bias = False

    def __init__(self, num_classes: int = 10, input_shape: tuple[int, ...] = (1, 28, 28)):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Flatten(),
            nn.Linear(math.prod(input_shape), 300), nn.ReLU(),
            nn.Linear(300, 100), nn.ReLU(),
            nn.Linear(100, num_classes),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


MODELS: dict[str, type[nn.Module]] = {
    "mlp": MLP,
    "conv2": Conv2,
    "conv4": Conv4,
    "conv7": Conv7,
    "conv13": Conv13,
    "resnet50": ResNet50,
}
assert tuple(MODELS) == MODEL_NAMES, "config.MODEL_NAMES must list the models of this table, in order"


def build_model(name: str, input_shape, num_classes: int) -> nn.Module:
    """The model called `name` for inputs of `input_shape` (C, H, W) and `num_classes` outputs.

    Every model but the MLP takes only the input shape it was designed for.
    """
    if name not in MODELS:
        raise SpecError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    model_class = MODELS[name]
    shape = checked_input_shape(input_shape)
    num_classes = checked_num_classes(num_classes)
    if model_class is MLP:
        return MLP(num_classes, shape)
    if shape != model_class.input_shape:
        raise SpecError(
            f"model {name!r} expects input shape {model_class.input_shape} (C, H, W), got {shape}; "
            f"use a dataset of that shape (--data cifar10 --data-dir DIR for (3, 32, 32), the default mnist5k "
            f"for (1, 28, 28)) or the 'mlp' model, which takes any shape"
        )
    return model_class(num_classes)


def checked_input_shape(input_shape) -> tuple[int, ...]:
    dims = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else ()
    if not dims or not all(is_positive_int(d) for d in dims):
        raise SpecError(
            f"input_shape must be a non-empty tuple of positive ints such as (1, 28, 28), "
            f"got {input_shape!r}"
        )
    return tuple(int(d) for d in dims)


def checked_num_classes(num_classes) -> int:
    if not is_positive_int(num_classes):
        raise SpecError(f"num_classes must be a positive int, got {num_classes!r}")
    return int(num_classes)


def is_positive_int(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool) and value > 0


def count_weights(module: nn.Module) -> int:
    """Number of elements in the weight tensors of the Conv and Linear layers (no biases)."""
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, WEIGHTED_LAYERS))
