"""Name -> (family, per-sample input shape, builder, note) for every architecture."""

from __future__ import annotations

from collections.abc import Callable

import onnx

from deinfer.zoo.architectures import (
    convnext,
    densenet,
    efficientnet,
    inception,
    mobilenet,
    regnet,
    resnet,
    sequence,
    squeezenet,
    ssd,
    vgg,
)

Builder = Callable[[str, tuple[int, ...], bool], onnx.ModelProto]
Entry = tuple[str, tuple[int, ...], Builder, str]

IMAGE_224 = (3, 224, 224)


def _resnet(cfg: resnet.ResNetConfig) -> Builder:
    return lambda name, shape, fold: resnet.build(name, cfg, shape[-1], fold)


def _regnet(cfg: regnet.RegNetConfig) -> Builder:
    return lambda name, shape, fold: regnet.build(name, cfg, shape[-1], fold)


def _vgg(depth: int, bn: bool) -> Builder:
    return lambda name, shape, fold: vgg.build_vgg(name, depth, bn, shape[-1], fold)


def _square(build: Callable[[str, int, bool], onnx.ModelProto]) -> Builder:
    """Adapt a builder taking the image side to the (name, shape, fold) signature."""
    return lambda name, shape, fold: build(name, shape[-1], fold)


def _entries() -> dict[str, Entry]:
    entries: dict[str, Entry] = {}
    for name, cfg in resnet.CONFIGS.items():
        family = next(f for f in ("wide_resnet", "resnext", "resnet") if name.startswith(f))
        entries[name] = (family, IMAGE_224, _resnet(cfg), "")
    for name, (depth, bn) in vgg.CONFIGS.items():
        entries[name] = ("vgg", IMAGE_224, _vgg(depth, bn), "")
    entries["alexnet"] = ("alexnet", IMAGE_224, _square(vgg.build_alexnet), "")
    for name, rcfg in regnet.CONFIGS.items():
        entries[name] = ("regnet", IMAGE_224, _regnet(rcfg), "")
    simple: list[tuple[str, str, Callable[[str, int, bool], onnx.ModelProto]]] = [
        ("mobilenet_v2", "mobilenet", mobilenet.build_mobilenet_v2),
        *((n, "mobilenet", mobilenet.build_mobilenet_v3) for n in mobilenet.V3_CONFIGS),
        *((n, "mnasnet", mobilenet.build_mnasnet) for n in mobilenet.MNAS_ALPHAS),
        *((n, "efficientnet", efficientnet.build_v1) for n in efficientnet.V1_SCALING),
        *((n, "efficientnet_v2", efficientnet.build_v2) for n in efficientnet.V2),
        *((n, "squeezenet", squeezenet.build_squeezenet) for n in squeezenet.SQUEEZENET),
        *((n, "shufflenet", squeezenet.build_shufflenet) for n in squeezenet.SHUFFLENET),
        *((n, "densenet", densenet.build) for n in densenet.CONFIGS),
        *((n, "convnext", convnext.build) for n in convnext.CONFIGS),
    ]
    for name, family, build in simple:
        entries[name] = (family, IMAGE_224, _square(build), "")
    entries["inception_v3"] = ("inception", (3, 299, 299), _square(inception.build), "")
    entries["ssd300_resnet50"] = ("ssd", (3, 300, 300), _square(ssd.build), "")
    entries["lstm2"] = (
        "lstm",
        (sequence.LSTM_STEPS, sequence.LSTM_FEATURES),
        sequence.build_lstm,
        "sequence of 100 steps x 50 features",
    )
    entries["transformer_encoder6"] = (
        "transformer",
        (sequence.TRANSFORMER_TOKENS, sequence.TRANSFORMER_WIDTH),
        sequence.build_transformer,
        "50 tokens of width 512",
    )
    return entries


ENTRIES: dict[str, Entry] = _entries()
