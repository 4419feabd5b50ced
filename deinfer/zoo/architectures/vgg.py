"""VGG (with and without BatchNorm) and AlexNet, as in torchvision."""

from __future__ import annotations

import onnx

from deinfer.zoo.architectures.spec import ShapeGraphBuilder

STAGE_WIDTHS = (64, 128, 256, 512, 512)
# Depth -> 3x3 convs per stage; each stage ends with a 2x2/2 max pool.
STAGE_CONVS: dict[int, tuple[int, ...]] = {
    11: (1, 1, 2, 2, 2),
    13: (2, 2, 2, 2, 2),
    16: (2, 2, 3, 3, 3),
    19: (2, 2, 4, 4, 4),
}
# name -> (depth, batch_norm)
CONFIGS: dict[str, tuple[int, bool]] = {
    f"vgg{depth}{'_bn' if bn else ''}": (depth, bn) for depth in STAGE_CONVS for bn in (False, True)
}


def _require_224(name: str, size: int) -> None:
    # The adaptive pool before the classifier is only modelled where it is the identity.
    if size != 224:
        raise ValueError(f"{name} is built for 224x224 inputs only, got {size}")


def _classifier(g: ShapeGraphBuilder, x: str, features: int) -> str:
    """Linear-ReLU-Dropout twice, then the 1000-way Linear (Dropout vanishes at inference)."""
    x = g.relu(g.dense(g.flatten(x), features, 4096))
    x = g.relu(g.dense(x, 4096, 4096))
    return g.dense(x, 4096, 1000)


def build_vgg(name: str, depth: int, batch_norm: bool, size: int, fold: bool) -> onnx.ModelProto:
    _require_224(name, size)
    g = ShapeGraphBuilder(name, fold)
    x = g.image_input(3, size, size)
    channels = 3
    for width, convs in zip(STAGE_WIDTHS, STAGE_CONVS[depth], strict=True):
        for _ in range(convs):
            y = g.conv2d(x, channels, width, 3, bias=True)
            # vgg*_bn convs keep their bias; folding BN only rewrites it.
            x = g.relu(g.batch_norm(y, width) if batch_norm and not fold else y)
            channels = width
        x = g.pool(x, "MaxPool", 2, 2)
    # AdaptiveAvgPool2d(7) is the identity on the 7x7 map of a 224 input.
    return g.finish([_classifier(g, x, channels * 49)], f"{name}: torchvision-style VGG")


def build_alexnet(name: str, size: int, fold: bool) -> onnx.ModelProto:
    _require_224(name, size)
    g = ShapeGraphBuilder(name, fold)
    x = g.image_input(3, size, size)
    x = g.pool(g.relu(g.conv2d(x, 3, 64, 11, 4, pad=2, bias=True)), "MaxPool", 3, 2)
    x = g.pool(g.relu(g.conv2d(x, 64, 192, 5, pad=2, bias=True)), "MaxPool", 3, 2)
    x = g.relu(g.conv2d(x, 192, 384, 3, bias=True))
    x = g.relu(g.conv2d(x, 384, 256, 3, bias=True))
    x = g.relu(g.conv2d(x, 256, 256, 3, bias=True))
    x = g.pool(x, "MaxPool", 3, 2)
    # AdaptiveAvgPool2d(6) is the identity on the 6x6 map of a 224 input.
    return g.finish([_classifier(g, x, 256 * 36)], f"{name}: torchvision-style AlexNet")
