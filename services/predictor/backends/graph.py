"""Graph backend: each model is a graph, encoded SIGN-style, then a tree regressor.

Operator graphs first: where the ONNX operator graph of a row's target and of every co-runner
is known (`operator_graph`: the public data sets' architectures from
services/predictor/operator_graphs.py, DeInfer's zoo for cpu-profiles), the regressor's input
is the query's configuration and the profiled solo values the serving system knows (the
forest's features), the target's operator-graph embedding and the mean of its co-runners'
(graph_encoder.operator_embedding; 1..N co-runners keep one width). How much of the embedding
to use (global totals, hop 0, or every SIGN hop) is chosen per fit by held-out-model folds
inside the training data. Such a model needs no co-location profile of its own.

Fallback, for rows whose models have no operator graph: the model's known profile as its
graph. Nodes are profiled configurations (iGniter: the solo batch x share grid; DeInfer: the
static rows per batch; RaPP: the five anchors; cpu-profiles: the solo grid), edges join
neighbouring configurations, node features are the measured values there; the query's own
configuration and the target's and co-runners' encodings form that regressor's input.
`GraphBackend.describe()` says which encoding the fit and the last prediction used.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache, partial
from typing import ClassVar

import numpy as np
import numpy.typing as npt
from sklearn.base import BaseEstimator
from sklearn.ensemble import ExtraTreesRegressor, RandomForestRegressor

from services.common import onnx_graph
from services.predictor import features, operator_graphs, splits
from services.predictor.backends.base import Backend, LogRatioBackend, NotFittedError, Regressor
from services.predictor.backends.forest import ForestBackend, make_forest
from services.predictor.datasets.base import (
    CPU_PROFILES,
    DEINFER_RTX3080,
    IGNITER_V100,
    RAPP_V100,
    FloatArray,
    IntArray,
    Queries,
    Samples,
)
from services.predictor.datasets.cpu_profiles import CpuProfiles
from services.predictor.datasets.deinfer_rtx3080 import DeinferProfiles
from services.predictor.datasets.igniter_v100 import IgniterProfiles
from services.predictor.datasets.rapp_v100 import ANCHORS, anchor_name
from services.predictor.graph_encoder import (
    NODE_FEATURES,
    OPERATOR_HOPS,
    OPERATOR_POOLS,
    TOTALS,
    encode,
    operator_embedding,
)
from services.predictor.rapp_anchor_imputation import FittedLaw

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


class ProfileGraphBackend(LogRatioBackend):
    """The fallback: trees on the query's configuration and its models' profile graphs."""

    name: ClassVar[str] = "graph-profile"

    def make_regressor(self, dataset: str) -> Regressor:
        return make_forest(dataset)

    def matrix(self, queries: Queries) -> tuple[tuple[str, ...], FloatArray]:
        matrix = graph_design(queries)
        return tuple(f"g{i}" for i in range(matrix.shape[1])), matrix


# ------------------------------------------------------------------ operator graphs

BoolArray = npt.NDArray[np.bool_]


@cache
def operator_graph(dataset: str, model: str) -> onnx_graph.GraphFeatures | None:
    """The ONNX operator graph of a data set's model (operator_graphs.py: the public data
    sets' architectures, the runnable zoo for cpu-profiles), or None where none is known."""
    try:
        return operator_graphs.operator_graph(dataset, model)
    except (KeyError, ValueError):  # a model (or data set) without an architecture
        return None


@cache
def model_embedding(dataset: str, model: str) -> FloatArray | None:
    """The operator graph's embedding, computed once per process (read-only: it is shared)."""
    graph = operator_graph(dataset, model)
    if graph is None:
        return None
    embedding = operator_embedding(graph, OPERATOR_HOPS)
    embedding.setflags(write=False)
    return embedding


def _corunner_names(cell: str) -> list[str]:
    return [name for name in str(cell).split(";") if name]


def covered_rows(queries: Queries) -> BoolArray:
    """Rows whose target and every co-runner have an operator graph."""
    names = {str(m) for m in queries.model}
    for cell in np.unique(queries.corunner):
        names.update(_corunner_names(str(cell)))
    known = {name for name in names if model_embedding(queries.dataset, name) is not None}
    return np.array(
        [
            str(model) in known and all(n in known for n in _corunner_names(str(cell)))
            for model, cell in zip(queries.model, queries.corunner, strict=True)
        ],
        dtype=np.bool_,
    )


# Column groups of an embedding (hop-major: every pool of hop 0, then hop 1, ...; then totals).
_HOP_WIDTH = len(OPERATOR_POOLS) * len(NODE_FEATURES)
_TOTALS = np.arange(
    (OPERATOR_HOPS + 1) * _HOP_WIDTH, (OPERATOR_HOPS + 1) * _HOP_WIDTH + len(TOTALS)
)
# Candidate views of the embedding, smallest first; grouped inner CV picks one per fit.
VIEWS: dict[str, IntArray] = {
    "totals": _TOTALS.astype(np.intp),
    "hop0": np.concatenate([np.arange(_HOP_WIDTH), _TOTALS]).astype(np.intp),
    "sign": np.arange(len(_TOTALS) + (OPERATOR_HOPS + 1) * _HOP_WIDTH, dtype=np.intp),
}


def embeddings(queries: Queries) -> tuple[FloatArray, FloatArray | None]:
    """Per row: the target's embedding, and the mean of its co-runners' (None for data sets
    without co-location; zeros for a row without co-runners). Rows must be covered."""
    dataset = queries.dataset
    width = len(VIEWS["sign"])

    def of(name: str) -> FloatArray:
        embedding = model_embedding(dataset, name)
        if embedding is None:
            raise ValueError(f"{dataset} model {name!r} has no operator graph")
        return embedding

    # One embedding per distinct model (or co-runner set), then gathered per row: RaPP's
    # 45k rows name 57 models.
    names, index = np.unique(np.asarray(queries.model, dtype=np.str_), return_inverse=True)
    table = np.array([of(str(n)) for n in names], dtype=np.float64).reshape(-1, width)
    target = table[index.reshape(-1)]
    if dataset == RAPP_V100:
        return target, None
    cells, index = np.unique(np.asarray(queries.corunner, dtype=np.str_), return_inverse=True)
    means = np.zeros((len(cells), width))
    for row, cell in enumerate(cells):
        members = _corunner_names(str(cell))
        if members:
            means[row] = np.mean([of(n) for n in members], axis=0)
    return target, means[index.reshape(-1)]


class OperatorGraphBackend(ForestBackend):
    """The forest's inputs (configuration and known solo profile) plus the target's and the
    co-runners' operator-graph embeddings, restricted to one view and to the columns that vary
    over the training models (the rest cannot split a tree)."""

    name: ClassVar[str] = "graph-operator"

    def __init__(self, view: str = "sign") -> None:
        super().__init__()
        self.view = view
        self._columns: IntArray | None = None  # embedding columns kept, within the view

    def _embedding_columns(self, queries: Queries) -> FloatArray:
        target, others = embeddings(queries)
        view = VIEWS[self.view]
        parts = [target[:, view]] if others is None else [target[:, view], others[:, view]]
        return np.column_stack(parts)

    def keep_varying(self, queries: Queries) -> None:
        block = self._embedding_columns(queries)
        self._columns = np.flatnonzero(np.ptp(block, axis=0) > 1e-12).astype(np.intp)

    def matrix(self, queries: Queries) -> tuple[tuple[str, ...], FloatArray]:
        names, base = super().matrix(queries)
        if self._columns is None:
            raise NotFittedError("operator-graph columns are chosen in fit")
        block = self._embedding_columns(queries)[:, self._columns]
        extra = tuple(f"op{i}" for i in self._columns)
        return names + extra, np.column_stack([base, block])

    def fit(self, samples: Samples) -> None:
        self.keep_varying(samples.queries)
        super().fit(samples)


# Ranking the views needs their relative error on held-out models, not a final model, so the
# candidates are cheaper than the final fit (which stays as it is): inner training and test
# folds are subsampled to RANKING_ROWS rows (RaPP's ~30k and ~15k; the inner latency law is
# fitted to the sample too), and every averaging tree ensemble keeps a RANKING_TREES share of
# its trees. Fewer trees add variance to an average of trees but do not change what it
# estimates (at a quarter, iGniter's near-tied views swapped in 3 of 4 held-out-model folds;
# at half, none did); boosting is left as is: fewer rounds would be another model.
RANKING_ROWS = 5_000
RANKING_TREES = 0.5
MIN_RANKING_TREES = 20


def thinned(regressor: Regressor, share: float = RANKING_TREES) -> Regressor:
    """`regressor` with every ExtraTrees / random forest inside it (our composite regressors
    hold them in attributes and lists) cut to `share` of its trees, in place."""
    if isinstance(regressor, ExtraTreesRegressor | RandomForestRegressor):
        trees = max(MIN_RANKING_TREES, round(share * regressor.n_estimators))
        return regressor.set_params(n_estimators=min(trees, regressor.n_estimators))
    if isinstance(regressor, BaseEstimator) or not type(regressor).__module__.startswith(
        "services."
    ):
        return regressor
    for value in vars(regressor).values():
        for member in value if isinstance(value, list | tuple) else (value,):
            thinned(member, share)
    return regressor


class _RankingBackend(OperatorGraphBackend):
    """A candidate view fitted only to rank it: the backend's regressor, thinned."""

    def make_regressor(self, dataset: str) -> Regressor:
        return thinned(super().make_regressor(dataset))


def _ranking_rows(rows: IntArray) -> IntArray:
    """A seeded sample of RANKING_ROWS of `rows` (all of them when there are fewer)."""
    if len(rows) <= RANKING_ROWS:
        return rows
    pick = np.random.default_rng(0).choice(rows, RANKING_ROWS, replace=False)
    return np.sort(pick).astype(np.intp)


def view_errors(samples: Samples, folds: int = 3) -> dict[str, float]:
    """Mean |log error| of each embedding view on held-out-model folds inside `samples`
    (no margin): the choice is made on training data only."""
    errors: dict[str, list[FloatArray]] = {view: [] for view in VIEWS}
    groups = len(np.unique(splits.model_groups(samples)))
    count = min(2 if samples.dataset == RAPP_V100 else folds, groups)
    for train, test in splits.held_out_model_sets(samples, count):
        inner, held = samples.take(_ranking_rows(train)), samples.take(_ranking_rows(test))
        # The base the final fit will use (RaPP: the latency law fitted to these rows).
        law = FittedLaw.fit(inner) if inner.dataset == RAPP_V100 else None
        for view in VIEWS:
            candidate = _RankingBackend(view)
            candidate.rapp_law = law
            candidate.keep_varying(inner.queries)
            regressor, fallback = candidate._fit_once(inner)
            z_pred = candidate._predict_z(regressor, held.queries)
            z_true = features.encode(held, candidate.base_values(held.queries, fallback))
            errors[view].append(np.abs(z_true - z_pred))
    return {view: float(np.mean(np.concatenate(e))) for view, e in errors.items() if e}


class GraphBackend(Backend):
    """Operator-graph embeddings where every model of a row has an operator graph; the
    profile-graph encoding for the other rows."""

    name: ClassVar[str] = "graph"
    # A view is chosen by held-out-model folds only with this many training models or more.
    min_models_to_choose: ClassVar[int] = 3

    def __init__(self) -> None:
        self.operator: OperatorGraphBackend | None = None
        self.profile: ProfileGraphBackend | None = None
        self.view_errors: dict[str, float] = {}
        self.operator_fraction = 0.0  # of training rows encoded with operator graphs
        self.last_operator_rows = 0
        self.last_profile_rows = 0
        self._samples: Samples | None = None

    def fit(self, samples: Samples) -> None:
        covered = covered_rows(samples.queries)
        self.operator_fraction = float(covered.mean()) if len(covered) else 0.0
        self.operator, self.profile, self.view_errors = None, None, {}
        if covered.all():
            # The profile fallback is fitted only once a query lacks an operator graph.
            self._samples = samples
        else:
            self._samples = None
            self.profile = ProfileGraphBackend()
            self.profile.fit(samples)
        if not covered.any():
            return
        operator_rows = samples.take(np.flatnonzero(covered).astype(np.intp))
        view = "sign"
        if len(np.unique(splits.model_groups(operator_rows))) >= self.min_models_to_choose:
            self.view_errors = view_errors(operator_rows)
        if self.view_errors:  # no inner fold when every model pairs with every other
            view = min(self.view_errors, key=lambda v: self.view_errors[v])
        self.operator = OperatorGraphBackend(view)
        self.operator.fit(operator_rows)

    def _profile_backend(self) -> ProfileGraphBackend:
        if self.profile is None:
            if self._samples is None:
                raise NotFittedError(f"{self.name} backend is not trained")
            self.profile = ProfileGraphBackend()
            self.profile.fit(self._samples)
        return self.profile

    def predict(self, queries: Queries) -> FloatArray:
        if self.operator is None and self.profile is None:
            raise NotFittedError(f"{self.name} backend is not trained")
        covered = (
            covered_rows(queries) if self.operator is not None else np.zeros(len(queries), bool)
        )
        predicted = np.full(len(queries), np.nan)
        if covered.any():
            assert self.operator is not None
            rows = np.flatnonzero(covered).astype(np.intp)
            predicted[rows] = self.operator.predict(queries.take(rows))
        if not covered.all():
            rows = np.flatnonzero(~covered).astype(np.intp)
            predicted[rows] = self._profile_backend().predict(queries.take(rows))
        self.last_operator_rows = int(covered.sum())
        self.last_profile_rows = int(len(queries) - covered.sum())
        return predicted

    @property
    def encoding(self) -> str:
        """Which graphs the fit used: operator, profile, or both (per row)."""
        if self.operator_fraction == 1.0:
            return "operator"
        return "profile" if self.operator_fraction == 0.0 else "operator+profile"

    def describe(self) -> dict[str, float]:
        """Numbers for the predictor's metadata: the share of training rows encoded with
        operator graphs, the embedding view chosen (index into VIEWS, -1: none)."""
        view = list(VIEWS).index(self.operator.view) if self.operator is not None else -1
        return {"graph_operator_rows": self.operator_fraction, "graph_operator_view": float(view)}
