"""DenseNet-121/161/169/201 (BC variant: 1x1 bottlenecks, halving transitions), torchvision-style.

Layers are pre-activation (BN-ReLU-conv): the BatchNorm that opens a layer follows a Concat,
not a conv, so it stays a node of its own even when the others are folded.
"""

from __future__ import annotations

import onnx

from deinfer.zoo.architectures.spec import ShapeGraphBuilder

BOTTLENECK = 4  # 1x1 conv width = BOTTLENECK x growth rate

# name -> (growth rate, layers per dense block, stem channels)
CONFIGS: dict[str, tuple[int, tuple[int, ...], int]] = {
    "densenet121": (32, (6, 12, 24, 16), 64),
    "densenet161": (48, (6, 12, 36, 24), 96),
    "densenet169": (32, (6, 12, 32, 32), 64),
    "densenet201": (32, (6, 12, 48, 32), 64),
}


def _bn_relu(g: ShapeGraphBuilder, x: str, channels: int) -> str:
    return g.relu(g.batch_norm(x, channels))


def build(name: str, size: int, fold: bool) -> onnx.ModelProto:
    growth, blocks, stem = CONFIGS[name]
    g = ShapeGraphBuilder(name, fold)
    x = g.conv_bn(g.image_input(3, size, size), 3, stem, 7, 2)
    x = g.pool(x, "MaxPool", 3, 2, 1)
    channels = stem
    for index, layers in enumerate(blocks):
        features = [x]
        for _ in range(layers):
            # Every layer reads the concatenation of all earlier outputs of the block.
            y = _bn_relu(g, g.concat(features), channels)
            y = g.conv_bn(y, channels, BOTTLENECK * growth, 1)
            features.append(g.conv2d(y, BOTTLENECK * growth, growth, 3))
            channels += growth
        x = g.concat(features)
        if index < len(blocks) - 1:
            x = g.conv2d(_bn_relu(g, x, channels), channels, channels // 2, 1)
            x = g.pool(x, "AveragePool", 2, 2)
            channels //= 2
    x = _bn_relu(g, x, channels)
    logits = g.dense(g.flatten(g.global_avg_pool(x)), channels, 1000)
    return g.finish([logits], f"{name}: torchvision-style DenseNet")
