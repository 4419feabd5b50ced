"""SqueezeNet 1.0 and 1.1 and ShuffleNetV2, as in torchvision."""

from __future__ import annotations

import onnx

from deinfer.zoo.architectures.spec import ShapeGraphBuilder

POOL = (0, 0)  # marks a 3x3/2 max pool (ceil mode) in a fire-module list
# name -> (stem channels, stem kernel, fire modules as (squeeze, expand) with pools)
SQUEEZENET: dict[str, tuple[int, int, list[tuple[int, int]]]] = {
    "squeezenet1_0": (
        96,
        7,
        [
            (16, 64),
            (16, 64),
            (32, 128),
            POOL,
            (32, 128),
            (48, 192),
            (48, 192),
            (64, 256),
            POOL,
            (64, 256),
        ],
    ),
    "squeezenet1_1": (
        64,
        3,
        [
            (16, 64),
            (16, 64),
            POOL,
            (32, 128),
            (32, 128),
            POOL,
            (48, 192),
            (48, 192),
            (64, 256),
            (64, 256),
        ],
    ),
}


def _fire(g: ShapeGraphBuilder, x: str, in_c: int, squeeze: int, expand: int) -> str:
    """Squeeze 1x1, then 1x1 and 3x3 expansions side by side, concatenated."""
    s = g.relu(g.conv2d(x, in_c, squeeze, 1, bias=True))
    e1 = g.relu(g.conv2d(s, squeeze, expand, 1, bias=True))
    e3 = g.relu(g.conv2d(s, squeeze, expand, 3, bias=True))
    return g.concat([e1, e3])


def build_squeezenet(name: str, size: int, fold: bool) -> onnx.ModelProto:
    stem, kernel, fires = SQUEEZENET[name]
    g = ShapeGraphBuilder(name, fold)
    x = g.relu(g.conv2d(g.image_input(3, size, size), 3, stem, kernel, 2, pad=0, bias=True))
    x = g.pool(x, "MaxPool", 3, 2, ceil=True)
    channels = stem
    for squeeze, expand in fires:
        if (squeeze, expand) == POOL:
            x = g.pool(x, "MaxPool", 3, 2, ceil=True)
            continue
        x = _fire(g, x, channels, squeeze, expand)
        channels = 2 * expand
    # Classifier: (Dropout) 1x1 conv to the classes, ReLU, global average pool.
    x = g.relu(g.conv2d(x, channels, 1000, 1, bias=True))
    logits = g.flatten(g.global_avg_pool(x))
    return g.finish([logits], f"{name}: torchvision-style SqueezeNet")


# ---------------------------------------------------------------------- ShuffleNetV2
STAGE_REPEATS = (4, 8, 4)
# name -> output channels of the stem, the three stages and the last 1x1 conv.
SHUFFLENET: dict[str, tuple[int, int, int, int, int]] = {
    "shufflenet_v2_x0_5": (24, 48, 96, 192, 1024),
    "shufflenet_v2_x1_0": (24, 116, 232, 464, 1024),
    "shufflenet_v2_x1_5": (24, 176, 352, 704, 1024),
    "shufflenet_v2_x2_0": (24, 244, 488, 976, 2048),
}


def _channel_shuffle(g: ShapeGraphBuilder, x: str, channels: int, hw: int) -> str:
    """Interleave the two branches: reshape to groups, swap, flatten back (0 keeps the batch)."""
    y = g.reshape(x, [0, 2, channels // 2, hw, hw])
    y = g.op("Transpose", [y], perm=[0, 2, 1, 3, 4])
    return g.reshape(y, [0, channels, hw, hw])


def _shuffle_unit(g: ShapeGraphBuilder, x: str, in_c: int, out_c: int, stride: int, hw: int) -> str:
    half = out_c // 2
    if stride == 1:
        # x.chunk(2, dim=1): the left half passes through untouched.
        left, right = g.multi_op("Split", [x], 2, axis=1)
        branch_in = half
    else:
        left = g.conv_bn(x, in_c, in_c, 3, stride, groups=in_c, act="none")
        left = g.conv_bn(left, in_c, half, 1)
        right, branch_in = x, in_c
    y = g.conv_bn(right, branch_in, half, 1)
    y = g.conv_bn(y, half, half, 3, stride, groups=half, act="none")
    y = g.conv_bn(y, half, half, 1)
    return _channel_shuffle(g, g.concat([left, y]), out_c, hw)


def build_shufflenet(name: str, size: int, fold: bool) -> onnx.ModelProto:
    stem, *stages, last = SHUFFLENET[name]
    g = ShapeGraphBuilder(name, fold)
    x = g.conv_bn(g.image_input(3, size, size), 3, stem, 3, 2)
    x = g.pool(x, "MaxPool", 3, 2, 1)
    channels, hw = stem, size // 4
    for out_c, repeats in zip(stages, STAGE_REPEATS, strict=True):
        hw //= 2
        for i in range(repeats):
            x = _shuffle_unit(g, x, channels, out_c, 2 if i == 0 else 1, hw)
            channels = out_c
    x = g.conv_bn(x, channels, last, 1)
    logits = g.dense(g.op("ReduceMean", [x], axes=[2, 3], keepdims=0), last, 1000)
    return g.finish([logits], f"{name}: torchvision-style ShuffleNetV2")
