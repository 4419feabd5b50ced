"""MobileNetV2, MobileNetV3 (large/small) and MNASNet, as in torchvision."""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from deinfer.zoo.architectures.spec import Activation, ShapeGraphBuilder
from deinfer.zoo.vision import MOBILENET_V2_SETTINGS  # the runnable zoo's table, paper Table 2


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of `divisor`, never more than 10 % below `value`."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


# ---------------------------------------------------------------------- MobileNetV2


def build_mobilenet_v2(name: str, size: int, fold: bool) -> onnx.ModelProto:
    g = ShapeGraphBuilder(name, fold)
    x = g.conv_bn(g.image_input(3, size, size), 3, 32, 3, 2, act="relu6")
    channels = 32
    for t, c, n, s in MOBILENET_V2_SETTINGS:
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = channels * t
            y = x if t == 1 else g.conv_bn(x, channels, hidden, 1, act="relu6")
            y = g.conv_bn(y, hidden, hidden, 3, stride, groups=hidden, act="relu6")
            y = g.conv_bn(y, hidden, c, 1, act="none")
            x = g.add(x, y) if stride == 1 and channels == c else y
            channels = c
    x = g.conv_bn(x, channels, 1280, 1, act="relu6")
    logits = g.dense(g.flatten(g.global_avg_pool(x)), 1280, 1000)
    return g.finish([logits], f"{name}: torchvision-style MobileNetV2")


# ---------------------------------------------------------------------- MobileNetV3
@dataclass(frozen=True)
class V3Block:
    kernel: int
    expanded: int
    out: int
    se: bool
    act: Activation
    stride: int


def _v3(*rows: tuple[int, int, int, bool, str, int]) -> tuple[V3Block, ...]:
    acts: dict[str, Activation] = {"RE": "relu", "HS": "hardswish"}
    return tuple(V3Block(k, e, o, se, acts[a], s) for k, e, o, se, a, s in rows)


# (kernel, expanded, out, SE, activation, stride) after a 16-channel stem; paper Tables 1-2.
V3_LARGE = _v3(
    (3, 16, 16, False, "RE", 1),
    (3, 64, 24, False, "RE", 2),
    (3, 72, 24, False, "RE", 1),
    (5, 72, 40, True, "RE", 2),
    (5, 120, 40, True, "RE", 1),
    (5, 120, 40, True, "RE", 1),
    (3, 240, 80, False, "HS", 2),
    (3, 200, 80, False, "HS", 1),
    (3, 184, 80, False, "HS", 1),
    (3, 184, 80, False, "HS", 1),
    (3, 480, 112, True, "HS", 1),
    (3, 672, 112, True, "HS", 1),
    (5, 672, 160, True, "HS", 2),
    (5, 960, 160, True, "HS", 1),
    (5, 960, 160, True, "HS", 1),
)
V3_SMALL = _v3(
    (3, 16, 16, True, "RE", 2),
    (3, 72, 24, False, "RE", 2),
    (3, 88, 24, False, "RE", 1),
    (5, 96, 40, True, "HS", 2),
    (5, 240, 40, True, "HS", 1),
    (5, 240, 40, True, "HS", 1),
    (5, 120, 48, True, "HS", 1),
    (5, 144, 48, True, "HS", 1),
    (5, 288, 96, True, "HS", 2),
    (5, 576, 96, True, "HS", 1),
    (5, 576, 96, True, "HS", 1),
)
# name -> (blocks, width of the hidden classifier layer)
V3_CONFIGS: dict[str, tuple[tuple[V3Block, ...], int]] = {
    "mobilenet_v3_large": (V3_LARGE, 1280),
    "mobilenet_v3_small": (V3_SMALL, 1024),
}


def build_mobilenet_v3(name: str, size: int, fold: bool) -> onnx.ModelProto:
    blocks, head = V3_CONFIGS[name]
    g = ShapeGraphBuilder(name, fold)
    x = g.conv_bn(g.image_input(3, size, size), 3, 16, 3, 2, act="hardswish")
    channels = 16
    for b in blocks:
        y = x
        if b.expanded != channels:
            y = g.conv_bn(y, channels, b.expanded, 1, act=b.act)
        y = g.conv_bn(y, b.expanded, b.expanded, b.kernel, b.stride, groups=b.expanded, act=b.act)
        if b.se:
            squeeze = make_divisible(b.expanded // 4)
            y = g.squeeze_excite(y, b.expanded, squeeze, "relu", gate="HardSigmoid")
        y = g.conv_bn(y, b.expanded, b.out, 1, act="none")
        x = g.add(x, y) if b.stride == 1 and channels == b.out else y
        channels = b.out
    last = 6 * channels
    x = g.conv_bn(x, channels, last, 1, act="hardswish")
    x = g.flatten(g.global_avg_pool(x))
    x = g.activation(g.dense(x, last, head), "hardswish")
    return g.finish([g.dense(x, head, 1000)], f"{name}: torchvision-style MobileNetV3")


# --------------------------------------------------------------------------- MNASNet
# (kernel, first stride, expansion, repeats) of the six stacks of MNASNet-B1.
MNAS_STACKS = ((3, 2, 3, 3), (5, 2, 3, 3), (5, 2, 6, 3), (3, 1, 6, 2), (5, 2, 6, 4), (3, 1, 6, 1))
MNAS_DEPTHS = (32, 16, 24, 40, 80, 96, 192, 320)
MNAS_ALPHAS: dict[str, float] = {
    "mnasnet0_5": 0.5,
    "mnasnet0_75": 0.75,
    "mnasnet1_0": 1.0,
    "mnasnet1_3": 1.3,
}


def _mnas_round(value: float) -> int:
    """torchvision's MNASNet depth rounding: multiple of 8, rounding up past 90 %."""
    rounded = max(8, int(value + 4) // 8 * 8)
    return rounded if rounded >= 0.9 * value else rounded + 8


def build_mnasnet(name: str, size: int, fold: bool) -> onnx.ModelProto:
    depths = [_mnas_round(d * MNAS_ALPHAS[name]) for d in MNAS_DEPTHS]
    g = ShapeGraphBuilder(name, fold)
    x = g.conv_bn(g.image_input(3, size, size), 3, depths[0], 3, 2)
    x = g.conv_bn(x, depths[0], depths[0], 3, groups=depths[0])
    x = g.conv_bn(x, depths[0], depths[1], 1, act="none")
    channels = depths[1]
    for (kernel, stride, expansion, repeats), out in zip(MNAS_STACKS, depths[2:], strict=True):
        for i in range(repeats):
            s = stride if i == 0 else 1
            hidden = channels * expansion
            y = g.conv_bn(x, channels, hidden, 1)
            y = g.conv_bn(y, hidden, hidden, kernel, s, groups=hidden)
            y = g.conv_bn(y, hidden, out, 1, act="none")
            x = g.add(x, y) if s == 1 and channels == out else y
            channels = out
    x = g.conv_bn(x, channels, 1280, 1)
    logits = g.dense(g.op("ReduceMean", [x], axes=[2, 3], keepdims=0), 1280, 1000)
    return g.finish([logits], f"{name}: torchvision-style MNASNet")
