"""Name -> builder table for the model zoo."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import onnx

from deinfer.zoo import bert, vision


@dataclass(frozen=True)
class ZooModel:
    """A zoo entry: ``build(seed)`` returns a fresh, deterministic ONNX model."""

    name: str
    description: str
    build: Callable[[int], onnx.ModelProto]


def _entries() -> list[ZooModel]:
    return [
        ZooModel(
            "resnet18", "ResNet-18 image classifier, [N,3,224,224] -> [N,1000]", vision.resnet18
        ),
        ZooModel(
            "resnet50",
            "ResNet-50 (v1.5) image classifier, [N,3,224,224] -> [N,1000]",
            vision.resnet50,
        ),
        ZooModel(
            "mobilenet_v2",
            "MobileNetV2 image classifier, [N,3,224,224] -> [N,1000]",
            vision.mobilenet_v2,
        ),
        ZooModel(
            "vgg16", "VGG-16 image classifier (~550 MB), [N,3,224,224] -> [N,1000]", vision.vgg16
        ),
        ZooModel(
            "bert",
            "BERT encoder (hidden 256, 4 layers, 4 heads, vocab 30522), "
            "int64 input_ids/attention_mask [N,S] -> last_hidden_state [N,S,256], "
            "pooled [N,256]; S <= 512",
            bert.bert,
        ),
        ZooModel("tiny_cnn", "Tiny residual CNN for tests, [N,3,32,32] -> [N,10]", vision.tiny_cnn),
        ZooModel(
            "tiny_bert",
            "Tiny BERT encoder for tests (hidden 32, 2 layers, vocab 512), "
            "int64 input_ids/attention_mask [N,S] -> last_hidden_state [N,S,32], "
            "pooled [N,32]; S <= 128",
            bert.tiny_bert,
        ),
    ]


ZOO_MODELS: dict[str, ZooModel] = {m.name: m for m in _entries()}
