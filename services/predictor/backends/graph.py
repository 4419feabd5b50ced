"""Graph backend: each model is a graph, encoded SIGN-style, then a tree regressor.

None of the three public data sets ships operator graphs (RaPP's `graph_features_all_models`
files hold only its latency table), so the graph of a model here is its known profile: nodes
are profiled configurations (iGniter: the solo batch x share grid; DeInfer: the static rows
per batch; RaPP: the five anchors), edges join neighbouring configurations, node features are
the measured values there. The query's own configuration and the target's and co-runners'
graph encodings form the regressor's input; no per-row static column is used.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import ClassVar

import numpy as np

from services.predictor import features
from services.predictor.backends.base import LogRatioBackend, Regressor
from services.predictor.backends.forest import make_forest
from services.predictor.datasets.base import (
    CPU_PROFILES,
    DEINFER_RTX3080,
    IGNITER_V100,
    FloatArray,
    Queries,
)
from services.predictor.datasets.cpu_profiles import CpuProfiles
from services.predictor.datasets.deinfer_rtx3080 import DeinferProfiles
from services.predictor.datasets.igniter_v100 import IgniterProfiles
from services.predictor.datasets.rapp_v100 import ANCHORS, anchor_name
from services.predictor.graph_encoder import encode

Graph = tuple[FloatArray, list[tuple[int, int]]]


def _chain(count: int) -> list[tuple[int, int]]:
    return [(i, i + 1) for i in range(count - 1)]


def igniter_graph(profiles: IgniterProfiles, model: str) -> Graph:
    solo = profiles.solo.get(model, {})
    latency = solo.get("latency", {})
    nodes: list[list[float]] = []
    index: dict[tuple[int, float], int] = {}
    for batch in sorted(latency):
        for share in sorted(solo.get("dram", {}).get(batch, {})):
            index[(batch, share)] = len(nodes)
            nodes.append(
                [
                    np.log2(batch),
                    share / 100.0,
                    np.log(latency[batch][share]),
                    np.log(solo["throughput"][batch][share]),
                    solo["l2cache"][batch][share] / 100.0,
                    solo["dram"][batch][share] / 100.0,
                ]
            )
    edges = []
    for (batch, share), i in index.items():
        for neighbour in ((batch + 1, share),):
            if neighbour in index:
                edges.append((i, index[neighbour]))
        higher = [s for b, s in index if b == batch and s > share]
        if higher:
            edges.append((i, index[(batch, min(higher))]))
    return np.array(nodes, dtype=np.float64).reshape(-1, 6), edges


def deinfer_graph(q: Queries, row: int, side: str) -> Graph:
    """The model's static rows by batch; the pair row's own static profile when absent."""
    profiles = q.profiles
    name = str(q.model[row] if side == "a" else q.corunner[row])
    static = profiles.static.get(name, ()) if isinstance(profiles, DeinferProfiles) else ()
    c = q.columns
    if static:
        nodes = [
            [np.log2(r.batch), r.l2_utilization / 100.0, np.log(r.gflops_rate)] for r in static
        ]
    else:
        nodes = [
            [
                np.log2(c[f"{side}_batchsize"][row]),
                c[f"{side}_mean_l2_utilization"][row] / 100.0,
                np.log(c[f"{side}_model_GFLOPS"][row]),
            ]
        ]
    return np.array(nodes, dtype=np.float64), _chain(len(nodes))


def cpu_graph(profiles: CpuProfiles, model: str) -> Graph:
    """The model's solo grid: one node per (batch, share), edges to the next batch at the
    same share and to the next share at the same batch."""
    points = sorted((b, s, ms) for (name, b, s), ms in profiles.solo.items() if name == model)
    index = {(b, s): i for i, (b, s, _) in enumerate(points)}
    nodes = [[np.log2(b), s, np.log(ms)] for b, s, ms in points]
    batches, shares = sorted({b for b, _ in index}), sorted({s for _, s in index})
    edges = []
    for (b, s), i in index.items():
        for neighbour in (
            (batches[batches.index(b) + 1], s) if b != batches[-1] else None,
            (b, shares[shares.index(s) + 1]) if s != shares[-1] else None,
        ):
            if neighbour in index:
                edges.append((i, index[neighbour]))
    return np.array(nodes, dtype=np.float64).reshape(-1, 3), edges


def rapp_graph(q: Queries, row: int) -> Graph:
    reference = features.rapp_reference(q.take(np.array([row], dtype=np.intp)))[0]
    nodes = []
    for batch, sm, quota in ANCHORS:
        value = q.columns[anchor_name((batch, sm, quota))][row]
        if not np.isnan(value):
            nodes.append([np.log2(batch), sm / 100.0, quota / 100.0, np.log(value / reference)])
    return np.array(nodes, dtype=np.float64).reshape(-1, 4), _chain(len(nodes))


def graph_design(q: Queries) -> FloatArray:
    """Per row: the query's configuration, then the encodings of its models' graphs."""
    cache: dict[tuple[object, ...], FloatArray] = {}

    def embed(key: tuple[object, ...], build: Callable[[], Graph]) -> FloatArray:
        if key not in cache:
            cache[key] = encode(*build())
        return cache[key]

    c = q.columns
    rows = []
    for i in range(len(q)):
        model, corunner = str(q.model[i]), str(q.corunner[i])
        if q.dataset == IGNITER_V100:
            profiles = q.profiles
            assert isinstance(profiles, IgniterProfiles)
            encoded = [
                embed((name,), partial(igniter_graph, profiles, name)) for name in (model, corunner)
            ]
            config = [
                np.log2(c["batch"][i]),
                c["share"][i] / 100,
                np.log2(c["co_batch"][i]),
                c["co_share"][i] / 100,
                np.log(c["co_latency"][i] / c["latency"][i]),
                c["l2cache"][i] / 100,
                c["co_l2cache"][i] / 100,
                c["dram"][i] / 100,
                c["co_dram"][i] / 100,
            ]
        elif q.dataset == DEINFER_RTX3080:
            encoded = [
                embed(("a", model, c["a_batchsize"][i]), partial(deinfer_graph, q, i, "a")),
                embed(("b", corunner, c["b_batchsize"][i]), partial(deinfer_graph, q, i, "b")),
            ]
            config = [
                c["a_share"][i] / 100,
                c["b_share"][i] / 100,
                c["b_copies"][i],
                np.log2(c["a_batchsize"][i]),
                np.log2(c["b_batchsize"][i]),
            ]
        elif q.dataset == CPU_PROFILES:
            profiles = q.profiles
            assert isinstance(profiles, CpuProfiles)
            own = embed((model,), partial(cpu_graph, profiles, model))
            # Several co-runners: the mean of their encodings keeps one width.
            others = [
                embed((name,), partial(cpu_graph, profiles, name)) for name in corunner.split(";")
            ]
            encoded = [own, np.mean(others, axis=0)]
            device = max(c["device_threads"][i], 1.0)
            config = [
                np.log2(c["batch"][i]),
                c["share"][i],
                c["corunners"][i],
                c["co_share"][i],
                max(0.0, c["threads"][i] + c["co_threads"][i] - device) / device,
                np.log(c["co_solo_ms_max"][i] / c["solo_ms"][i]),
            ]
        else:
            mask = tuple(bool(np.isnan(c[anchor_name(a)][i])) for a in ANCHORS)
            encoded = [embed((model, mask), partial(rapp_graph, q, i))]
            config = [
                np.log2(c["batch"][i]),
                c["sm"][i] / 100,
                100 / c["sm"][i],
                c["quota"][i] / 100,
                100 / c["quota"][i],
            ]
        rows.append(np.concatenate([config, *encoded]))
    return np.array(rows, dtype=np.float64)


class GraphBackend(LogRatioBackend):
    name: ClassVar[str] = "graph"

    def make_regressor(self, dataset: str) -> Regressor:
        return make_forest(dataset)

    def matrix(self, queries: Queries) -> tuple[tuple[str, ...], FloatArray]:
        matrix = graph_design(queries)
        return tuple(f"g{i}" for i in range(matrix.shape[1])), matrix
