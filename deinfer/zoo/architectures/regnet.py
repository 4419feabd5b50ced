"""RegNetX / RegNetY (Radosavovic et al., 2020), as in torchvision.

Each model is generated from the paper's linear width rule: block j gets width
w_0 + w_a * j, quantised to the nearest w_0 * w_m^k (multiple of 8); runs of equal width
form the stages; widths are then rounded to a multiple of the group width (up where
plain rounding would lose more than 10 %, which makes regnet_x_400mf's last stage 400 wide).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import onnx

from deinfer.zoo.architectures.mobilenet import make_divisible
from deinfer.zoo.architectures.spec import ShapeGraphBuilder

STEM_WIDTH = 32
SE_RATIO = 0.25  # RegNetY only


@dataclass(frozen=True)
class RegNetConfig:
    depth: int
    w_0: int
    w_a: float
    w_m: float
    group_width: int
    se: bool


CONFIGS: dict[str, RegNetConfig] = {
    "regnet_y_400mf": RegNetConfig(16, 48, 27.89, 2.09, 8, True),
    "regnet_y_800mf": RegNetConfig(14, 56, 38.84, 2.4, 16, True),
    "regnet_y_1_6gf": RegNetConfig(27, 48, 20.71, 2.65, 24, True),
    "regnet_y_3_2gf": RegNetConfig(21, 80, 42.63, 2.66, 24, True),
    "regnet_y_8gf": RegNetConfig(17, 192, 76.82, 2.19, 56, True),
    "regnet_y_16gf": RegNetConfig(18, 200, 106.23, 2.48, 112, True),
    "regnet_y_32gf": RegNetConfig(20, 232, 115.89, 2.53, 232, True),
    "regnet_y_128gf": RegNetConfig(27, 456, 160.83, 2.52, 264, True),
    "regnet_x_400mf": RegNetConfig(22, 24, 24.48, 2.54, 16, False),
    "regnet_x_800mf": RegNetConfig(16, 56, 35.73, 2.28, 16, False),
    "regnet_x_1_6gf": RegNetConfig(18, 80, 34.01, 2.25, 24, False),
    "regnet_x_3_2gf": RegNetConfig(25, 88, 26.31, 2.25, 48, False),
    "regnet_x_8gf": RegNetConfig(23, 80, 49.56, 2.88, 120, False),
    "regnet_x_16gf": RegNetConfig(22, 216, 55.59, 2.1, 128, False),
    "regnet_x_32gf": RegNetConfig(23, 320, 69.86, 2.0, 168, False),
}


def stages(cfg: RegNetConfig) -> list[tuple[int, int, int]]:
    """(width, depth, group width) per stage."""
    widths = []
    for j in range(cfg.depth):
        continuous = cfg.w_0 + cfg.w_a * j
        k = round(math.log(continuous / cfg.w_0) / math.log(cfg.w_m))
        widths.append(int(round(cfg.w_0 * cfg.w_m**k / 8) * 8))
    runs: list[list[int]] = []
    for width in widths:
        if runs and runs[-1][0] == width:
            runs[-1][1] += 1
        else:
            runs.append([width, 1])
    result = []
    for width, depth in runs:
        group = min(cfg.group_width, width)
        result.append((make_divisible(width, group), depth, group))
    return result


def build(name: str, cfg: RegNetConfig, size: int, fold: bool) -> onnx.ModelProto:
    g = ShapeGraphBuilder(name, fold)
    x = g.conv_bn(g.image_input(3, size, size), 3, STEM_WIDTH, 3, 2)
    channels = STEM_WIDTH
    for width, depth, group in stages(cfg):
        for i in range(depth):
            stride = 2 if i == 0 else 1
            # Bottleneck ratio 1: the 3x3 group conv runs at the block's output width.
            y = g.conv_bn(x, channels, width, 1)
            y = g.conv_bn(y, width, width, 3, stride, groups=width // group)
            if cfg.se:
                y = g.squeeze_excite(y, width, round(SE_RATIO * channels), "relu")
            y = g.conv_bn(y, width, width, 1, act="none")
            shortcut = x
            if stride != 1 or channels != width:
                shortcut = g.conv_bn(x, channels, width, 1, stride, act="none")
            x = g.relu(g.add(shortcut, y))
            channels = width
    logits = g.dense(g.flatten(g.global_avg_pool(x)), channels, 1000)
    return g.finish([logits], f"{name}: torchvision-style RegNet")
