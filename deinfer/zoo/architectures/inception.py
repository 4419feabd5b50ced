"""Inception v3 (Szegedy et al., 2016) at 299x299, as in torchvision, in inference form.

The auxiliary classifier only runs in training, so it is not part of the graph (torchvision
counts its ~3.3 M parameters in the model's 27.2 M; the inference graph has ~23.8 M).
"""

from __future__ import annotations

import onnx

from deinfer.zoo.architectures.spec import ShapeGraphBuilder, Size2


class _Inception:
    """Branch helpers over one builder; every conv is BasicConv2d (conv, BN, ReLU)."""

    def __init__(self, g: ShapeGraphBuilder) -> None:
        self.g = g

    def conv(
        self,
        x: str,
        in_c: int,
        out_c: int,
        kernel: Size2,
        stride: int = 1,
        pad: Size2 = 0,
    ) -> str:
        return self.g.conv_bn(x, in_c, out_c, kernel, stride, pad)

    def avg_branch(self, x: str, in_c: int, out_c: int) -> str:
        return self.conv(self.g.pool(x, "AveragePool", 3, 1, 1), in_c, out_c, 1)

    def block_a(self, x: str, in_c: int, pool_features: int) -> tuple[str, int]:
        b1 = self.conv(x, in_c, 64, 1)
        b5 = self.conv(self.conv(x, in_c, 48, 1), 48, 64, 5, pad=2)
        b3 = self.conv(self.conv(x, in_c, 64, 1), 64, 96, 3, pad=1)
        b3 = self.conv(b3, 96, 96, 3, pad=1)
        bp = self.avg_branch(x, in_c, pool_features)
        return self.g.concat([b1, b5, b3, bp]), 224 + pool_features

    def block_b(self, x: str, in_c: int) -> tuple[str, int]:
        b3 = self.conv(x, in_c, 384, 3, 2)
        bd = self.conv(self.conv(x, in_c, 64, 1), 64, 96, 3, pad=1)
        bd = self.conv(bd, 96, 96, 3, 2)
        bp = self.g.pool(x, "MaxPool", 3, 2)
        return self.g.concat([b3, bd, bp]), 384 + 96 + in_c

    def block_c(self, x: str, in_c: int, c7: int) -> tuple[str, int]:
        """Factorised 7x7: 1x7 and 7x1 convs."""
        b1 = self.conv(x, in_c, 192, 1)
        b7 = self.conv(x, in_c, c7, 1)
        b7 = self.conv(b7, c7, c7, (1, 7), pad=(0, 3))
        b7 = self.conv(b7, c7, 192, (7, 1), pad=(3, 0))
        bd = self.conv(x, in_c, c7, 1)
        for out_c, kernel, pad in (
            (c7, (7, 1), (3, 0)),
            (c7, (1, 7), (0, 3)),
            (c7, (7, 1), (3, 0)),
            (192, (1, 7), (0, 3)),
        ):
            bd = self.conv(bd, c7, out_c, kernel, pad=pad)
        bp = self.avg_branch(x, in_c, 192)
        return self.g.concat([b1, b7, bd, bp]), 768

    def block_d(self, x: str, in_c: int) -> tuple[str, int]:
        b3 = self.conv(self.conv(x, in_c, 192, 1), 192, 320, 3, 2)
        b7 = self.conv(x, in_c, 192, 1)
        b7 = self.conv(b7, 192, 192, (1, 7), pad=(0, 3))
        b7 = self.conv(b7, 192, 192, (7, 1), pad=(3, 0))
        b7 = self.conv(b7, 192, 192, 3, 2)
        bp = self.g.pool(x, "MaxPool", 3, 2)
        return self.g.concat([b3, b7, bp]), 320 + 192 + in_c

    def _split_3x3(self, x: str, in_c: int) -> str:
        """1x3 and 3x1 convs side by side (the expanded filter bank)."""
        a = self.conv(x, in_c, 384, (1, 3), pad=(0, 1))
        b = self.conv(x, in_c, 384, (3, 1), pad=(1, 0))
        return self.g.concat([a, b])

    def block_e(self, x: str, in_c: int) -> tuple[str, int]:
        b1 = self.conv(x, in_c, 320, 1)
        b3 = self._split_3x3(self.conv(x, in_c, 384, 1), 384)
        bd = self.conv(self.conv(x, in_c, 448, 1), 448, 384, 3, pad=1)
        bd = self._split_3x3(bd, 384)
        bp = self.avg_branch(x, in_c, 192)
        return self.g.concat([b1, b3, bd, bp]), 2048


def build(name: str, size: int, fold: bool) -> onnx.ModelProto:
    g = ShapeGraphBuilder(name, fold)
    n = _Inception(g)
    x = n.conv(g.image_input(3, size, size), 3, 32, 3, 2)
    x = n.conv(x, 32, 32, 3)
    x = g.pool(n.conv(x, 32, 64, 3, pad=1), "MaxPool", 3, 2)
    x = n.conv(x, 64, 80, 1)
    x = g.pool(n.conv(x, 80, 192, 3), "MaxPool", 3, 2)
    channels = 192
    for pool_features in (32, 64, 64):
        x, channels = n.block_a(x, channels, pool_features)
    x, channels = n.block_b(x, channels)
    for c7 in (128, 160, 160, 192):
        x, channels = n.block_c(x, channels, c7)
    x, channels = n.block_d(x, channels)
    for _ in range(2):
        x, channels = n.block_e(x, channels)
    logits = g.dense(g.flatten(g.global_avg_pool(x)), channels, 1000)
    return g.finish([logits], f"{name}: torchvision-style Inception v3, no auxiliary head")
