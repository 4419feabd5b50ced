"""EfficientNet B0-B7 and EfficientNetV2 S/M/L, as in torchvision."""

from __future__ import annotations

import math
from dataclasses import dataclass

import onnx

from deinfer.zoo.architectures.mobilenet import make_divisible
from deinfer.zoo.architectures.spec import ShapeGraphBuilder


@dataclass(frozen=True)
class Stage:
    fused: bool  # FusedMBConv (EfficientNetV2's early stages) instead of MBConv
    expansion: int
    kernel: int
    stride: int
    in_c: int
    out_c: int
    layers: int


def _mb(*rows: tuple[int, int, int, int, int, int]) -> tuple[Stage, ...]:
    return tuple(Stage(False, *row) for row in rows)


# B0: (expansion, kernel, stride, in, out, layers) of the seven MBConv stages.
B0 = _mb(
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)
# name -> (width multiplier, depth multiplier), compound scaling of B0.
V1_SCALING: dict[str, tuple[float, float]] = {
    "efficientnet_b0": (1.0, 1.0),
    "efficientnet_b1": (1.0, 1.1),
    "efficientnet_b2": (1.1, 1.2),
    "efficientnet_b3": (1.2, 1.4),
    "efficientnet_b4": (1.4, 1.8),
    "efficientnet_b5": (1.6, 2.2),
    "efficientnet_b6": (1.8, 2.6),
    "efficientnet_b7": (2.0, 3.1),
}


FUSED, MB = True, False


def _v2(*rows: tuple[bool, int, int, int, int, int, int]) -> tuple[Stage, ...]:
    return tuple(Stage(*row) for row in rows)


V2: dict[str, tuple[Stage, ...]] = {
    "efficientnet_v2_s": _v2(
        (FUSED, 1, 3, 1, 24, 24, 2),
        (FUSED, 4, 3, 2, 24, 48, 4),
        (FUSED, 4, 3, 2, 48, 64, 4),
        (MB, 4, 3, 2, 64, 128, 6),
        (MB, 6, 3, 1, 128, 160, 9),
        (MB, 6, 3, 2, 160, 256, 15),
    ),
    "efficientnet_v2_m": _v2(
        (FUSED, 1, 3, 1, 24, 24, 3),
        (FUSED, 4, 3, 2, 24, 48, 5),
        (FUSED, 4, 3, 2, 48, 80, 5),
        (MB, 4, 3, 2, 80, 160, 7),
        (MB, 6, 3, 1, 160, 176, 14),
        (MB, 6, 3, 2, 176, 304, 18),
        (MB, 6, 3, 1, 304, 512, 5),
    ),
    "efficientnet_v2_l": _v2(
        (FUSED, 1, 3, 1, 32, 32, 4),
        (FUSED, 4, 3, 2, 32, 64, 7),
        (FUSED, 4, 3, 2, 64, 96, 7),
        (MB, 4, 3, 2, 96, 192, 10),
        (MB, 6, 3, 1, 192, 224, 19),
        (MB, 6, 3, 2, 224, 384, 25),
        (MB, 6, 3, 1, 384, 640, 7),
    ),
}
V2_LAST_CHANNELS = 1280


def scaled(stages: tuple[Stage, ...], width: float, depth: float) -> tuple[Stage, ...]:
    def channels(c: int) -> int:
        return make_divisible(c * width)

    return tuple(
        Stage(
            s.fused,
            s.expansion,
            s.kernel,
            s.stride,
            channels(s.in_c),
            channels(s.out_c),
            math.ceil(s.layers * depth),
        )
        for s in stages
    )


def _block(g: ShapeGraphBuilder, x: str, s: Stage, in_c: int, stride: int) -> str:
    hidden = make_divisible(in_c * s.expansion)
    if s.fused:
        if s.expansion == 1:
            y = g.conv_bn(x, in_c, s.out_c, s.kernel, stride, act="silu")
        else:
            y = g.conv_bn(x, in_c, hidden, s.kernel, stride, act="silu")
            y = g.conv_bn(y, hidden, s.out_c, 1, act="none")
    else:
        y = x if s.expansion == 1 else g.conv_bn(x, in_c, hidden, 1, act="silu")
        y = g.conv_bn(y, hidden, hidden, s.kernel, stride, groups=hidden, act="silu")
        y = g.squeeze_excite(y, hidden, max(1, in_c // 4), "silu")
        y = g.conv_bn(y, hidden, s.out_c, 1, act="none")
    # Stochastic depth is the identity at inference.
    return g.add(x, y) if stride == 1 and in_c == s.out_c else y


def _build(
    name: str, stages: tuple[Stage, ...], last: int, size: int, fold: bool
) -> onnx.ModelProto:
    g = ShapeGraphBuilder(name, fold)
    x = g.conv_bn(g.image_input(3, size, size), 3, stages[0].in_c, 3, 2, act="silu")
    for s in stages:
        for i in range(s.layers):
            in_c = s.in_c if i == 0 else s.out_c
            x = _block(g, x, s, in_c, s.stride if i == 0 else 1)
    x = g.conv_bn(x, stages[-1].out_c, last, 1, act="silu")
    logits = g.dense(g.flatten(g.global_avg_pool(x)), last, 1000)
    return g.finish([logits], f"{name}: torchvision-style EfficientNet")


def build_v1(name: str, size: int, fold: bool) -> onnx.ModelProto:
    stages = scaled(B0, *V1_SCALING[name])
    return _build(name, stages, 4 * stages[-1].out_c, size, fold)


def build_v2(name: str, size: int, fold: bool) -> onnx.ModelProto:
    return _build(name, V2[name], V2_LAST_CHANNELS, size, fold)
