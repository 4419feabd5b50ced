"""Name -> (family, per-sample input shape, builder, note) for every architecture."""

from __future__ import annotations

from collections.abc import Callable

import onnx

from deinfer.zoo.architectures import resnet, vgg

Builder = Callable[[str, tuple[int, ...], bool], onnx.ModelProto]
Entry = tuple[str, tuple[int, ...], Builder, str]

IMAGE_224 = (3, 224, 224)


def _resnet(cfg: resnet.ResNetConfig) -> Builder:
    return lambda name, shape, fold: resnet.build(name, cfg, shape[-1], fold)


def _vgg(depth: int, bn: bool) -> Builder:
    return lambda name, shape, fold: vgg.build_vgg(name, depth, bn, shape[-1], fold)


def _entries() -> dict[str, Entry]:
    entries: dict[str, Entry] = {}
    for name, cfg in resnet.CONFIGS.items():
        family = name.split("_")[0].rstrip("0123456789")
        entries[name] = (family, IMAGE_224, _resnet(cfg), "")
    for name, (depth, bn) in vgg.CONFIGS.items():
        entries[name] = ("vgg", IMAGE_224, _vgg(depth, bn), "")
    entries["alexnet"] = (
        "alexnet",
        IMAGE_224,
        lambda name, shape, fold: vgg.build_alexnet(name, shape[-1], fold),
        "",
    )
    return entries


ENTRIES: dict[str, Entry] = _entries()
