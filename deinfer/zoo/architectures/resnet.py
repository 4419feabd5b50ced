"""ResNet v1.5 (stride on the 3x3 conv), ResNeXt and Wide ResNet, as in torchvision."""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from deinfer.zoo.architectures.spec import ShapeGraphBuilder

STAGE_PLANES = (64, 128, 256, 512)


@dataclass(frozen=True)
class ResNetConfig:
    blocks: tuple[int, int, int, int]
    bottleneck: bool
    groups: int = 1
    width_per_group: int = 64

    @property
    def expansion(self) -> int:
        return 4 if self.bottleneck else 1


CONFIGS: dict[str, ResNetConfig] = {
    "resnet18": ResNetConfig((2, 2, 2, 2), bottleneck=False),
    "resnet34": ResNetConfig((3, 4, 6, 3), bottleneck=False),
    "resnet50": ResNetConfig((3, 4, 6, 3), bottleneck=True),
    "resnet101": ResNetConfig((3, 4, 23, 3), bottleneck=True),
    "resnet152": ResNetConfig((3, 8, 36, 3), bottleneck=True),
    "resnext50_32x4d": ResNetConfig((3, 4, 6, 3), True, groups=32, width_per_group=4),
    "resnext101_32x8d": ResNetConfig((3, 4, 23, 3), True, groups=32, width_per_group=8),
    "resnext101_64x4d": ResNetConfig((3, 4, 23, 3), True, groups=64, width_per_group=4),
    "wide_resnet50_2": ResNetConfig((3, 4, 6, 3), True, width_per_group=128),
    "wide_resnet101_2": ResNetConfig((3, 4, 23, 3), True, width_per_group=128),
}


def block(
    g: ShapeGraphBuilder, x: str, in_c: int, planes: int, stride: int, cfg: ResNetConfig
) -> tuple[str, int]:
    """One residual block; returns (output, output channels)."""
    out_c = planes * cfg.expansion
    if cfg.bottleneck:
        width = planes * cfg.width_per_group // 64 * cfg.groups
        y = g.conv_bn(x, in_c, width, 1)
        y = g.conv_bn(y, width, width, 3, stride, groups=cfg.groups)
        y = g.conv_bn(y, width, out_c, 1, act="none")
    else:
        y = g.conv_bn(x, in_c, planes, 3, stride)
        y = g.conv_bn(y, planes, planes, 3, act="none")
    shortcut = x
    if stride != 1 or in_c != out_c:
        shortcut = g.conv_bn(x, in_c, out_c, 1, stride, act="none")
    return g.relu(g.add(y, shortcut)), out_c


def stem(g: ShapeGraphBuilder, x: str) -> str:
    """7x7/2 conv to 64 channels, then 3x3/2 max pool."""
    return g.pool(g.conv_bn(x, 3, 64, 7, 2), "MaxPool", 3, 2, 1)


def stage(
    g: ShapeGraphBuilder,
    x: str,
    in_c: int,
    planes: int,
    count: int,
    stride: int,
    cfg: ResNetConfig,
) -> tuple[str, int]:
    for i in range(count):
        x, in_c = block(g, x, in_c, planes, stride if i == 0 else 1, cfg)
    return x, in_c


def build(name: str, cfg: ResNetConfig, size: int, fold_batchnorm: bool) -> onnx.ModelProto:
    g = ShapeGraphBuilder(name, fold_batchnorm)
    x = stem(g, g.image_input(3, size, size))
    channels = 64
    for index, (planes, count) in enumerate(zip(STAGE_PLANES, cfg.blocks, strict=True)):
        x, channels = stage(g, x, channels, planes, count, 1 if index == 0 else 2, cfg)
    logits = g.dense(g.flatten(g.global_avg_pool(x)), channels, 1000)
    return g.finish([logits], f"{name}: torchvision-style definition, shape-only weights")
