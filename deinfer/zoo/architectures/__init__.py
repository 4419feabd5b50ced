"""Architecture-faithful, shape-only ONNX graphs of the models in the public data sets.

`build("resnet50")` returns an ONNX model whose operators, channels, kernels, strides and groups
follow the published (torchvision-style) definition, with every weight declared by shape only
(see `spec`). Names are torchvision's (plus `ssd300_resnet50`, `lstm2` and
`transformer_encoder6` for the detection and sequence models of the data sets). The graphs
are for static analysis (`services.common.onnx_graph.graph_features`), not for execution.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import onnx

from deinfer.zoo.architectures import registry

__all__ = ["Architecture", "architecture", "build", "names"]


@dataclass(frozen=True)
class Architecture:
    name: str
    family: str
    # Per-sample input shape (no batch dimension).
    input_shape: tuple[int, ...]
    builder: Callable[[str, tuple[int, ...], bool], onnx.ModelProto]
    doc: str = ""

    def build(self, fold_batchnorm: bool = True) -> onnx.ModelProto:
        return self.builder(self.name, self.input_shape, fold_batchnorm)


def names() -> list[str]:
    return sorted(registry.ENTRIES)


def architecture(name: str) -> Architecture:
    try:
        family, input_shape, builder, doc = registry.ENTRIES[name]
    except KeyError:
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(names())}") from None
    return Architecture(name, family, input_shape, builder, doc)


def build(name: str, fold_batchnorm: bool = True) -> onnx.ModelProto:
    """Shape-only ONNX graph of `name` (batch dimension symbolic, `N`)."""
    return architecture(name).build(fold_batchnorm)
