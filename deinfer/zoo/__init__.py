"""Model zoo: deterministic ONNX models built from numpy weights (no downloads, no torch).

Usage: ``save_model("resnet18", Path("models"))`` writes ``models/resnet18.onnx``; the same
(name, seed) always gives the same bytes, so models can be regenerated instead of stored.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from deinfer.zoo.registry import ZOO_MODELS, ZooModel

__all__ = [
    "ZOO_MODELS",
    "ZooModel",
    "build_model",
    "get_model",
    "list_models",
    "save_model",
    "write_model",
]


def list_models() -> list[str]:
    return sorted(ZOO_MODELS)


def get_model(name: str) -> ZooModel:
    """Look up a zoo entry; unknown names raise ``ValueError`` listing the known ones."""
    try:
        return ZOO_MODELS[name]
    except KeyError:
        known = ", ".join(list_models())
        raise ValueError(f"unknown zoo model {name!r}; known models: {known}") from None


def build_model(name: str, seed: int = 0) -> onnx.ModelProto:
    return get_model(name).build(seed)


def save_model(name: str, out_dir: Path, seed: int = 0) -> Path:
    """Build ``name`` and write it to ``<out_dir>/<name>.onnx``; returns that path."""
    return write_model(build_model(name, seed), out_dir / f"{name}.onnx")


def write_model(model: onnx.ModelProto, path: Path) -> Path:
    """Serialise ``model`` to ``path`` (creating parent folders) and return the path.

    Zoo models embed no timestamps or paths, so the bytes depend only on (name, seed).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString(deterministic=True))
    return path
