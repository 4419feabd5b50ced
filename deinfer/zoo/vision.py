"""Image classifiers with their published architectures (torchvision layouts).

BatchNorm is folded into the preceding conv, as an inference exporter would do, so layer
counts match the originals while parameter counts differ only by the BN affine terms.
"""

from __future__ import annotations

import onnx

from deinfer.zoo.builder import FLOAT, GraphBuilder

NUM_CLASSES = 1000
IMAGENET_SHAPE = ("batch", 3, 224, 224)
# Residual branches end with a damped BN gamma (like torchvision's zero_init_residual,
# but non-zero) so activations do not double at every block of random-weight nets.
RESIDUAL_GAMMA = 0.2


def _classifier_model(
    g: GraphBuilder, features: str, in_f: int, doc: str, input_shape: tuple[int | str, ...]
) -> onnx.ModelProto:
    """Shared tail: global pool -> flatten -> FC logits, plus the graph signature."""
    logits = g.gemm(g.flatten(g.global_avg_pool(features)), in_f, NUM_CLASSES, gain=1.0)
    g.add_output(logits, "output", FLOAT, ("batch", NUM_CLASSES))
    return _finish(g, doc, input_shape)


def _finish(g: GraphBuilder, doc: str, input_shape: tuple[int | str, ...]) -> onnx.ModelProto:
    g.add_input("input", FLOAT, input_shape)
    return g.to_model(doc)


# ------------------------------------------------------------------------ ResNet
def _basic_block(g: GraphBuilder, x: str, in_c: int, planes: int, stride: int) -> str:
    out = g.relu(g.conv(x, in_c, planes, 3, stride))
    out = g.conv(out, planes, planes, 3, gamma_scale=RESIDUAL_GAMMA)
    return g.relu(g.add(out, _shortcut(g, x, in_c, planes, stride)))


def _bottleneck(g: GraphBuilder, x: str, in_c: int, planes: int, stride: int) -> str:
    # ResNet v1.5: the stride sits on the 3x3 conv, as in torchvision.
    out_c = planes * 4
    out = g.relu(g.conv(x, in_c, planes, 1))
    out = g.relu(g.conv(out, planes, planes, 3, stride))
    out = g.conv(out, planes, out_c, 1, gamma_scale=RESIDUAL_GAMMA)
    return g.relu(g.add(out, _shortcut(g, x, in_c, out_c, stride)))


def _shortcut(g: GraphBuilder, x: str, in_c: int, out_c: int, stride: int) -> str:
    if stride == 1 and in_c == out_c:
        return x
    return g.conv(x, in_c, out_c, 1, stride)


def _resnet(name: str, seed: int, blocks: tuple[int, ...], bottleneck: bool) -> onnx.ModelProto:
    g = GraphBuilder(name, seed)
    x = g.max_pool(g.relu(g.conv("input", 3, 64, 7, 2)), 3, 2, 1)
    in_c, expansion = 64, 4 if bottleneck else 1
    block = _bottleneck if bottleneck else _basic_block
    for stage, count in enumerate(blocks):
        planes = 64 * 2**stage
        for i in range(count):
            x = block(g, x, in_c, planes, 2 if i == 0 and stage > 0 else 1)
            in_c = planes * expansion
    doc = f"{name}: ResNet {blocks} {'bottleneck' if bottleneck else 'basic'} blocks, BN folded"
    return _classifier_model(g, x, in_c, doc, IMAGENET_SHAPE)


def resnet18(seed: int = 0) -> onnx.ModelProto:
    return _resnet("resnet18", seed, (2, 2, 2, 2), bottleneck=False)


def resnet50(seed: int = 0) -> onnx.ModelProto:
    return _resnet("resnet50", seed, (3, 4, 6, 3), bottleneck=True)


# ------------------------------------------------------------------- MobileNetV2
# (expand ratio t, output channels c, repeats n, first stride s) from the paper, Table 2.
MOBILENET_V2_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _inverted_residual(g: GraphBuilder, x: str, in_c: int, out_c: int, stride: int, t: int) -> str:
    hidden = in_c * t
    residual = stride == 1 and in_c == out_c
    out = x if t == 1 else g.relu6(g.conv(x, in_c, hidden, 1))
    out = g.relu6(g.conv(out, hidden, hidden, 3, stride, groups=hidden))  # depthwise
    # Linear bottleneck: no activation after the projection.
    out = g.conv(out, hidden, out_c, 1, gamma_scale=RESIDUAL_GAMMA if residual else 1.0)
    return g.add(out, x) if residual else out


def mobilenet_v2(seed: int = 0) -> onnx.ModelProto:
    g = GraphBuilder("mobilenet_v2", seed)
    x = g.relu6(g.conv("input", 3, 32, 3, 2))
    in_c = 32
    for t, c, n, s in MOBILENET_V2_SETTINGS:
        for i in range(n):
            x = _inverted_residual(g, x, in_c, c, s if i == 0 else 1, t)
            in_c = c
    x = g.relu6(g.conv(x, in_c, 1280, 1))
    doc = "mobilenet_v2: MobileNetV2 width 1.0, 17 inverted residual blocks, BN folded"
    return _classifier_model(g, x, 1280, doc, IMAGENET_SHAPE)


# ------------------------------------------------------------------------- VGG16
# Configuration "D" of Simonyan & Zisserman: 13 3x3 convs in 5 stages, each stage closed
# by a 2x2 max pool.
VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def vgg16(seed: int = 0) -> onnx.ModelProto:
    g = GraphBuilder("vgg16", seed)
    x, in_c = "input", 3
    for widths in VGG16_STAGES:
        for out_c in widths:
            x = g.relu(g.conv(x, in_c, out_c, 3, bn=False))
            in_c = out_c
        x = g.max_pool(x, 2, 2)
    # At 224x224 the features are 512x7x7, so torchvision's adaptive pool is an identity.
    x = g.relu(g.gemm(g.flatten(x), 512 * 7 * 7, 4096))
    x = g.relu(g.gemm(x, 4096, 4096))
    logits = g.gemm(x, 4096, NUM_CLASSES, gain=1.0)
    g.add_output(logits, "output", FLOAT, ("batch", NUM_CLASSES))
    return _finish(g, "vgg16: VGG configuration D, 13 conv + 3 FC, no BatchNorm", IMAGENET_SHAPE)


# ---------------------------------------------------------------------- tiny_cnn
def tiny_cnn(seed: int = 0) -> onnx.ModelProto:
    """A few thousand parameters: stem, one residual block, classifier on 32x32 inputs."""
    g = GraphBuilder("tiny_cnn", seed)
    x = g.max_pool(g.relu(g.conv("input", 3, 8, 3)), 2, 2)  # 16x16
    x = g.relu(g.conv(x, 8, 16, 3, 2))  # 8x8
    branch = g.conv(g.relu(g.conv(x, 16, 16, 3)), 16, 16, 3, gamma_scale=RESIDUAL_GAMMA)
    x = g.relu(g.add(branch, x))
    logits = g.gemm(g.flatten(g.global_avg_pool(x)), 16, 10, gain=1.0)
    g.add_output(logits, "output", FLOAT, ("batch", 10))
    return _finish(
        g, "tiny_cnn: 4-conv residual CNN for tests, 32x32 -> 10 classes", ("batch", 3, 32, 32)
    )
