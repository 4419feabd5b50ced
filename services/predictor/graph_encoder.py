"""SIGN-style graph encoding with scipy sparse matrices: propagate node features over the
symmetric-normalised adjacency (with self loops) for 0..K hops, then mean- and max-pool every
hop into one fixed-size vector per graph. No learned message passing: the regressor on top
learns from the pooled multi-hop features (Frasca et al., SIGN)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from services.predictor.datasets.base import FloatArray

HOPS = 2


def normalised_adjacency(edges: list[tuple[int, int]], nodes: int) -> sp.csr_matrix:
    rows = [a for a, b in edges] + [b for a, b in edges] + list(range(nodes))
    cols = [b for a, b in edges] + [a for a, b in edges] + list(range(nodes))
    adjacency = sp.csr_matrix(
        (np.ones(len(rows)), (rows, cols)), shape=(nodes, nodes), dtype=np.float64
    )
    adjacency.data[:] = 1.0  # duplicate edges count once
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    scale = sp.diags(1.0 / np.sqrt(degree))
    return sp.csr_matrix(scale @ adjacency @ scale)


def encode(node_features: FloatArray, edges: list[tuple[int, int]], hops: int = HOPS) -> FloatArray:
    """[mean, max] of A^k X for k = 0..hops, concatenated: length 2 * (hops + 1) * features."""
    nodes, width = node_features.shape
    if nodes == 0:
        return np.zeros(2 * (hops + 1) * width)
    adjacency = normalised_adjacency(edges, nodes)
    pooled = []
    current = node_features
    for hop in range(hops + 1):
        if hop:
            current = np.asarray(adjacency @ current)
        pooled.extend([current.mean(axis=0), current.max(axis=0)])
    return np.concatenate(pooled)


def encoded_width(node_width: int, hops: int = HOPS) -> int:
    return 2 * (hops + 1) * node_width
