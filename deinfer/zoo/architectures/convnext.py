"""ConvNeXt tiny/small/base/large (Liu et al., 2022), as in torchvision."""

from __future__ import annotations

import onnx

from deinfer.zoo.architectures.spec import ShapeGraphBuilder

# name -> (stage widths, blocks per stage)
CONFIGS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "convnext_tiny": ((96, 192, 384, 768), (3, 3, 9, 3)),
    "convnext_small": ((96, 192, 384, 768), (3, 3, 27, 3)),
    "convnext_base": ((128, 256, 512, 1024), (3, 3, 27, 3)),
    "convnext_large": ((192, 384, 768, 1536), (3, 3, 27, 3)),
}


def _block(g: ShapeGraphBuilder, x: str, dim: int) -> str:
    """7x7 depthwise conv, then LayerNorm and the 4x MLP channels-last, scaled, residual."""
    y = g.conv2d(x, dim, dim, 7, groups=dim, bias=True)
    y = g.norm_last(g.op("Transpose", [y], perm=[0, 2, 3, 1]), dim)
    y = g.dense_nd(g.gelu(g.dense_nd(y, dim, 4 * dim)), 4 * dim, dim)
    y = g.op("Transpose", [y], perm=[0, 3, 1, 2])
    y = g.op("Mul", [y, g.weight("layer_scale", (dim, 1, 1))])
    return g.add(x, y)  # stochastic depth is the identity at inference


def build(name: str, size: int, fold: bool) -> onnx.ModelProto:
    widths, depths = CONFIGS[name]
    g = ShapeGraphBuilder(name, fold)
    # Patchify stem: 4x4 conv with stride 4, then LayerNorm over channels.
    x = g.conv2d(g.image_input(3, size, size), 3, widths[0], 4, 4, pad=0, bias=True)
    x = g.norm_channels(x, widths[0])
    for index, (dim, depth) in enumerate(zip(widths, depths, strict=True)):
        if index:
            x = g.norm_channels(x, widths[index - 1])
            x = g.conv2d(x, widths[index - 1], dim, 2, 2, pad=0, bias=True)
        for _ in range(depth):
            x = _block(g, x, dim)
    x = g.norm_channels(g.global_avg_pool(x), widths[-1])
    logits = g.dense(g.flatten(x), widths[-1], 1000)
    return g.finish([logits], f"{name}: torchvision-style ConvNeXt")
