"""SIGN-style graph encoding with scipy sparse matrices: propagate node features over the
symmetric-normalised adjacency (with self loops) for 0..K hops, then pool every hop into one
fixed-size vector per graph. No learned message passing: the regressor on top learns from the
pooled multi-hop features (Frasca et al., SIGN).

`operator_embedding` applies it to an ONNX operator graph (services/common/onnx_graph.py):
one node per operator, featured by its op type (one-hot over `OP_VOCABULARY`, unknown types
in "other") and its per-sample cost (log1p FLOPs, bytes, parameters, arithmetic intensity);
the pooled hops are followed by the graph's global totals.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from services.common.onnx_graph import GraphFeatures
from services.predictor.datasets.base import FloatArray

HOPS = 2
POOLS = ("mean", "max")
OPERATOR_HOPS = 2
OPERATOR_POOLS = ("mean", "max", "sum")

# The operators that carry most of the time of CNN and transformer inference graphs; every
# other type shares the "other" column, so a graph with an unseen op still encodes.
OP_VOCABULARY = (
    "Conv",
    "ConvTranspose",
    "Gemm",
    "MatMul",
    "BatchNormalization",
    "LayerNormalization",
    "Relu",
    "Clip",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Tanh",
    "Erf",
    "Gelu",
    "Add",
    "Mul",
    "Sub",
    "Div",
    "Softmax",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "ReduceMean",
    "Concat",
    "Split",
    "Slice",
    "Reshape",
    "Transpose",
    "Flatten",
    "Gather",
    "LSTM",
    "GRU",
)
OTHER = "other"
COST_FEATURES = ("log_flops", "log_bytes", "log_params", "log_intensity")
NODE_FEATURES = (*OP_VOCABULARY, OTHER, *COST_FEATURES)
TOTALS = (
    "log_total_flops",
    "log_total_macs",
    "log_total_bytes",
    "log_total_params",
    "log_weight_bytes",
    "log_nodes",
    "log_edges",
    "log_depth",
)
_VOCABULARY_INDEX = {op: i for i, op in enumerate(OP_VOCABULARY)}


def normalised_adjacency(edges: Sequence[tuple[int, int]], nodes: int) -> sp.csr_matrix:
    """D^-1/2 (A + A^T + I) D^-1/2: data flows both ways, duplicate edges count once."""
    rows = [a for a, b in edges] + [b for a, b in edges] + list(range(nodes))
    cols = [b for a, b in edges] + [a for a, b in edges] + list(range(nodes))
    adjacency = sp.csr_matrix(
        (np.ones(len(rows)), (rows, cols)), shape=(nodes, nodes), dtype=np.float64
    )
    adjacency.data[:] = 1.0  # duplicate edges count once
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    scale = sp.diags(1.0 / np.sqrt(degree))
    return sp.csr_matrix(scale @ adjacency @ scale)


def _pool(values: FloatArray, how: str) -> FloatArray:
    if how == "mean":
        return np.asarray(values.mean(axis=0), dtype=np.float64)
    if how == "max":
        return np.asarray(values.max(axis=0), dtype=np.float64)
    if how == "sum":
        return np.asarray(values.sum(axis=0), dtype=np.float64)
    raise ValueError(f"unknown pooling {how!r}; one of mean, max, sum")


def encode(
    node_features: FloatArray,
    edges: Sequence[tuple[int, int]],
    hops: int = HOPS,
    pools: Sequence[str] = POOLS,
) -> FloatArray:
    """[pool(A^k X) for each pool] for k = 0..hops, concatenated hop by hop:
    length len(pools) * (hops + 1) * features."""
    nodes, width = node_features.shape
    if nodes == 0:
        return np.zeros(encoded_width(width, hops, pools))
    adjacency = normalised_adjacency(edges, nodes)
    pooled: list[FloatArray] = []
    current = node_features
    for hop in range(hops + 1):
        if hop:
            current = np.asarray(adjacency @ current)
        pooled.extend(_pool(current, how) for how in pools)
    return np.concatenate(pooled)


def encoded_width(node_width: int, hops: int = HOPS, pools: Sequence[str] = POOLS) -> int:
    return len(pools) * (hops + 1) * node_width


def operator_node_features(graph: GraphFeatures) -> FloatArray:
    """One row per operator: op-type one-hot (unknown types in "other"), then its cost."""
    matrix = np.zeros((len(graph.nodes), len(NODE_FEATURES)))
    for row, node in enumerate(graph.nodes):
        matrix[row, _VOCABULARY_INDEX.get(node.op_type, len(OP_VOCABULARY))] = 1.0
    costs = len(OP_VOCABULARY) + 1
    flops = np.array([n.flops for n in graph.nodes], dtype=np.float64)
    moved = np.array([n.bytes for n in graph.nodes], dtype=np.float64)
    params = np.array([n.params for n in graph.nodes], dtype=np.float64)
    matrix[:, costs] = np.log1p(flops)
    matrix[:, costs + 1] = np.log1p(moved)
    matrix[:, costs + 2] = np.log1p(params)
    # FLOPs per byte: compute- vs memory-bound operators slow down under different contention.
    matrix[:, costs + 3] = np.log1p(flops / np.maximum(moved, 1.0))
    return matrix


def graph_totals(graph: GraphFeatures) -> FloatArray:
    return np.log1p(
        np.array(
            [
                graph.flops,
                graph.macs,
                graph.bytes_moved,
                graph.params,
                graph.weight_bytes,
                len(graph.nodes),
                len(graph.edges),
                graph.depth,
            ],
            dtype=np.float64,
        )
    )


def operator_embedding(graph: GraphFeatures, hops: int = OPERATOR_HOPS) -> FloatArray:
    """The operator graph's SIGN encoding (mean/max/sum of hops 0..hops), then its totals."""
    encoded = encode(operator_node_features(graph), graph.edges, hops, OPERATOR_POOLS)
    return np.concatenate([encoded, graph_totals(graph)])


def operator_embedding_names(hops: int = OPERATOR_HOPS) -> tuple[str, ...]:
    """Column names of `operator_embedding`, in its order."""
    hop_names = [
        f"h{hop}_{how}_{feature}"
        for hop in range(hops + 1)
        for how in OPERATOR_POOLS
        for feature in NODE_FEATURES
    ]
    return (*hop_names, *TOTALS)
