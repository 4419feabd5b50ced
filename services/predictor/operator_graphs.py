"""Operator graphs (ONNX static features) for the models the data sets name.

The public data sets name their models but ship no graphs. `operator_graph(dataset, model)`
maps a data set's spelling of a model to an architecture-faithful, shape-only ONNX graph
(`deinfer.zoo.architectures`), or for DeInfer's own CPU profiles to the runnable zoo model
that was profiled, and returns `graph_features` of it for ONE sample (the predictor scales by
batch). Inputs: images 3x224x224 (inception_v3 299, SSD 300); DeInfer's LSTM-2 a
(100 steps x 50 features) sequence, its transformer 50 tokens of width 512 (see
`deinfer.zoo.architectures.sequence`); the CPU profiles' BERTs 128 tokens.

How BatchNorm appears follows the runtime that produced each data set: folded into the
convolutions for TVM (DeInfer) and TensorRT (iGniter), which fuse it; a node of its own for
RaPP's PyTorch eager runs, which launch it as a kernel.

Results are cached in-process and on disk (`$DEINFER_CACHE_DIR`, default
`~/.cache/deinfer`, under `operator_graphs/<fingerprint of the builder code>/`), so a change
to an architecture or to `onnx_graph` never reads a stale entry.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx

from deinfer.zoo import architectures
from services.common import onnx_graph
from services.common.onnx_graph import GraphFeatures, NodeFeatures, graph_features
from services.predictor.datasets.base import (
    CPU_PROFILES,
    DEINFER_RTX3080,
    IGNITER_V100,
    RAPP_V100,
)

log = logging.getLogger(__name__)

CACHE_ENV = "DEINFER_CACHE_DIR"
# Bump when the cached file layout changes.
CACHE_FORMAT = 1

# DeInfer's RTX 3080 tables (interference tables and model_L2_gflops.csv spellings).
DEINFER_NAMES: dict[str, str] = {
    "resnet-18": "resnet18",
    "resnet-34": "resnet34",
    "resnet-50": "resnet50",
    "resnet-101": "resnet101",
    "resnet-152": "resnet152",
    "vgg-11": "vgg11",
    "vgg-13": "vgg13",
    "vgg-16": "vgg16",
    "vgg-19": "vgg19",
    "mobilenet": "mobilenet_v2",  # 3,504,872 parameters in the table: torchvision's v2
    "squeezenet-1.0": "squeezenet1_0",
    "squeezenet": "squeezenet1_0",  # model_L2_gflops.csv spelling
    "squeezenet-1.1": "squeezenet1_1",
    "shufflenet": "shufflenet_v2_x1_0",
    "LSTM-2": "lstm2",
    "transformer": "transformer_encoder6",
}
IGNITER_NAMES: dict[str, str] = {
    "alexnet": "alexnet",
    "resnet50": "resnet50",
    "vgg19": "vgg19",
    # NVIDIA's SSD300 v1.1 (ResNet-50 backbone) from torch.hub, per iGniter's ssd_onnx.py;
    # its 8732 boxes x (4 + 81) float outputs match the 2,968,880 output bytes in `config`.
    "ssd": "ssd300_resnet50",
}
# Architectures that are not torchvision classification models.
NOT_TORCHVISION = frozenset({"ssd300_resnet50", "lstm2", "transformer_encoder6"})
# DeInfer's CPU profiles ran the runnable zoo (deinfer.zoo) models themselves.
CPU_SEQUENCE_LENGTH = onnx_graph.DEFAULT_SEQUENCE_LENGTH


def known_models(dataset: str) -> list[str]:
    """Every model name `operator_graph` resolves for `dataset`."""
    if dataset == DEINFER_RTX3080:
        return sorted(DEINFER_NAMES)
    if dataset == IGNITER_V100:
        return sorted(IGNITER_NAMES)
    if dataset == RAPP_V100:
        return sorted(set(architectures.names()) - NOT_TORCHVISION)
    if dataset == CPU_PROFILES:
        from deinfer.zoo import list_models

        return list_models()
    raise ValueError(
        f"no operator graphs for data set {dataset!r}; "
        f"known: {DEINFER_RTX3080}, {IGNITER_V100}, {RAPP_V100}, {CPU_PROFILES}"
    )


def _source(dataset: str, model: str) -> Callable[[], tuple[onnx.ModelProto, int]]:
    """How to build (ONNX model, sequence length) for a data set's model name."""
    if model not in known_models(dataset):
        raise KeyError(f"no operator graph for model {model!r} of data set {dataset!r}")
    if dataset == CPU_PROFILES:
        from deinfer.zoo import build_model

        return lambda: (build_model(model), CPU_SEQUENCE_LENGTH)
    name = {DEINFER_RTX3080: DEINFER_NAMES, IGNITER_V100: IGNITER_NAMES}.get(dataset, {})
    arch = name.get(model, model)
    fold = dataset != RAPP_V100
    # Architecture inputs have no symbolic dimension but the batch: the length is unused.
    return lambda: (architectures.build(arch, fold_batchnorm=fold), 1)


def operator_graph(dataset: str, model: str) -> GraphFeatures:
    """Static features of `model` as named in `dataset`, for one sample.

    Raises ValueError for an unknown data set and KeyError for an unknown model.
    """
    return _cached(dataset, model)


@functools.cache
def _cached(dataset: str, model: str) -> GraphFeatures:
    build = _source(dataset, model)
    path = _cache_path(dataset, model)
    if path is not None and path.exists():
        try:
            return _decode(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable operator-graph cache %s: %s", path, exc)
    onnx_model, sequence_length = build()
    features = graph_features(onnx_model, sequence_length=sequence_length)
    if path is not None:
        _write(path, _encode(features))
    return features


def clear_memory_cache() -> None:
    _cached.cache_clear()


# ------------------------------------------------------------------------ disk cache
def cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV)
    return Path(root) if root else Path.home() / ".cache" / "deinfer"


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """Hash of every source file that shapes the features (builders and onnx_graph)."""
    arch_dir = Path(architectures.__file__).parent
    zoo_dir = arch_dir.parent
    files = sorted(arch_dir.glob("*.py")) + sorted(zoo_dir.glob("*.py"))
    files.append(Path(onnx_graph.__file__))
    digest = hashlib.sha256(f"format {CACHE_FORMAT} onnx {onnx.__version__}".encode())
    for file in files:
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def _cache_path(dataset: str, model: str) -> Path | None:
    if os.environ.get(CACHE_ENV) == "":
        return None  # explicitly disabled
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model)
    return cache_dir() / "operator_graphs" / code_fingerprint() / dataset / f"{safe}.json"


def _write(path: Path, payload: dict[str, Any]) -> None:
    """Atomic write; a cache that cannot be written only costs a rebuild next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False) as tmp:
            json.dump(payload, tmp, separators=(",", ":"))
        os.replace(tmp.name, path)
    except OSError as exc:
        log.warning("cannot write operator-graph cache %s: %s", path, exc)


def _encode(f: GraphFeatures) -> dict[str, Any]:
    return {
        "flops": f.flops,
        "macs": f.macs,
        "params": f.params,
        "bytes_moved": f.bytes_moved,
        "weight_bytes": f.weight_bytes,
        "op_histogram": f.op_histogram,
        "depth": f.depth,
        "nodes": [[n.name, n.op_type, n.flops, n.macs, n.bytes, n.params] for n in f.nodes],
        "edges": f.edges,
        "input_shapes": f.input_shapes,
        "unresolved_tensors": f.unresolved_tensors,
        "sequence_length": f.sequence_length,
    }


def _decode(d: dict[str, Any]) -> GraphFeatures:
    return GraphFeatures(
        flops=float(d["flops"]),
        macs=float(d["macs"]),
        params=int(d["params"]),
        bytes_moved=int(d["bytes_moved"]),
        weight_bytes=int(d["weight_bytes"]),
        op_histogram={str(k): int(v) for k, v in d["op_histogram"].items()},
        depth=int(d["depth"]),
        nodes=[
            NodeFeatures(str(a), str(b), float(c), float(e), int(g), int(h))
            for a, b, c, e, g, h in d["nodes"]
        ],
        edges=[(int(a), int(b)) for a, b in d["edges"]],
        input_shapes={str(k): [int(x) for x in v] for k, v in d["input_shapes"].items()},
        unresolved_tensors=int(d["unresolved_tensors"]),
        sequence_length=int(d["sequence_length"]),
    )
