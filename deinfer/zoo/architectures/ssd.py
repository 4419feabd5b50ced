"""SSD300 with a ResNet-50 backbone (NVIDIA's "SSD300 v1.1", the model iGniter profiled).

Backbone: torchvision ResNet-50 up to and including layer3, with layer3's first block at
stride 1 so the first detection map is 38x38x1024. Five extra blocks (1x1 then 3x3 conv)
shrink it to 19, 10, 5, 3 and 1. Every map gets a 3x3 location head (4 per default box) and
a 3x3 class head (81 COCO classes per box); 4, 6, 6, 6, 4, 4 boxes per cell give 8732 boxes.
Outputs are the raw boxes [N, 4, 8732] and scores [N, 81, 8732] (decoding and NMS run on
the host).
"""

from __future__ import annotations

import onnx

from deinfer.zoo.architectures import resnet
from deinfer.zoo.architectures.spec import ShapeGraphBuilder

CLASSES = 81
BOXES_PER_CELL = (4, 6, 6, 6, 4, 4)
MAP_CHANNELS = (1024, 512, 512, 256, 256, 256)
EXTRA_MIDDLE = (256, 256, 128, 128, 128)
BACKBONE = resnet.CONFIGS["resnet50"]
LAYER_STRIDES = (1, 2, 1)  # ResNet-50's layer1..layer3, layer3 kept at 38x38


def build(name: str, size: int, fold: bool) -> onnx.ModelProto:
    g = ShapeGraphBuilder(name, fold)
    x = resnet.stem(g, g.image_input(3, size, size))
    channels = 64
    stages = zip(resnet.STAGE_PLANES[:3], BACKBONE.blocks[:3], LAYER_STRIDES, strict=True)
    for planes, count, stride in stages:
        x, channels = resnet.stage(g, x, channels, planes, count, stride, BACKBONE)
    maps = [x]
    for index, (middle, out_c) in enumerate(zip(EXTRA_MIDDLE, MAP_CHANNELS[1:], strict=True)):
        y = g.conv_bn(maps[-1], MAP_CHANNELS[index], middle, 1)
        # The first three shrink with stride 2; the last two with unpadded 3x3 convs.
        y = g.conv_bn(y, middle, out_c, 3, *((2, 1) if index < 3 else (1, 0)))
        maps.append(y)
    locations, scores = [], []
    for feature, in_c, boxes in zip(maps, MAP_CHANNELS, BOXES_PER_CELL, strict=True):
        loc = g.conv2d(feature, in_c, boxes * 4, 3, bias=True)
        conf = g.conv2d(feature, in_c, boxes * CLASSES, 3, bias=True)
        locations.append(g.reshape(loc, [0, 4, -1]))
        scores.append(g.reshape(conf, [0, CLASSES, -1]))
    outputs = [g.concat(locations, axis=2), g.concat(scores, axis=2)]
    return g.finish(outputs, f"{name}: SSD300 with a ResNet-50 backbone (NVIDIA v1.1 style)")
