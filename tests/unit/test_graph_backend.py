"""The graph backend over ONNX operator graphs: the encoder's invariances, co-runner pooling,
and the fallback to profile graphs for models without an operator graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deinfer.zoo import build_model
from services.common.onnx_graph import GraphFeatures, NodeFeatures, graph_features
from services.predictor import datasets
from services.predictor.backends import graph
from services.predictor.backends.graph import GraphBackend, covered_rows, embeddings
from services.predictor.core import PredictorCore
from services.predictor.datasets.base import FloatArray, Samples
from services.predictor.graph_encoder import (
    NODE_FEATURES,
    OP_VOCABULARY,
    OTHER,
    encode,
    encoded_width,
    operator_embedding,
    operator_embedding_names,
    operator_node_features,
)
from services.predictor.metrics import score
from services.predictor.placements import Placement, ProfileBook, Query

CPU_DATA = Path(__file__).resolve().parents[2] / "data" / "cpu-profiles"
needs_cpu_data = pytest.mark.skipif(not CPU_DATA.is_dir(), reason=f"{CPU_DATA} not found")


def _node(op: str, flops: float, moved: int, params: int = 0) -> NodeFeatures:
    return NodeFeatures(op, op, flops, flops / 2, moved, params)


def _graph(nodes: list[NodeFeatures], edges: list[tuple[int, int]]) -> GraphFeatures:
    return GraphFeatures(
        flops=sum(n.flops for n in nodes),
        macs=sum(n.macs for n in nodes),
        params=sum(n.params for n in nodes),
        bytes_moved=sum(n.bytes for n in nodes),
        weight_bytes=4 * sum(n.params for n in nodes),
        op_histogram={},
        depth=3,
        nodes=nodes,
        edges=edges,
        input_shapes={},
    )


def test_operator_node_features_one_hot_and_costs() -> None:
    nodes = [_node("Conv", 1e6, 4000, 300), _node("FancyNewOp", 0.0, 80)]
    matrix = operator_node_features(_graph(nodes, [(0, 1)]))
    column = {name: i for i, name in enumerate(NODE_FEATURES)}
    assert matrix.shape == (2, len(OP_VOCABULARY) + 1 + 4)
    assert matrix[0].sum() - matrix[0, len(OP_VOCABULARY) + 1 :].sum() == 1.0  # one-hot
    assert matrix[0, column["Conv"]] == 1.0
    assert matrix[1, column[OTHER]] == 1.0  # an op outside the vocabulary
    assert matrix[0, column["log_flops"]] == pytest.approx(np.log1p(1e6))
    assert matrix[0, column["log_bytes"]] == pytest.approx(np.log1p(4000))
    assert matrix[0, column["log_params"]] == pytest.approx(np.log1p(300))
    assert matrix[0, column["log_intensity"]] == pytest.approx(np.log1p(1e6 / 4000))
    assert matrix[1, column["log_flops"]] == 0.0


def test_sum_pooling_and_widths() -> None:
    nodes = np.array([[1.0], [3.0]])
    encoded = encode(nodes, [(0, 1)], hops=0, pools=("mean", "max", "sum"))
    assert encoded == pytest.approx([2.0, 3.0, 4.0])
    assert len(encode(np.zeros((0, 5)), [], 1, ("sum",))) == encoded_width(5, 1, ("sum",))
    with pytest.raises(ValueError, match="pooling"):
        encode(nodes, [], 0, ("median",))
    embedding = operator_embedding(_graph([_node("Relu", 10.0, 8)], []))
    assert len(embedding) == len(operator_embedding_names())


def test_operator_embedding_ignores_node_order() -> None:
    real = graph_features(build_model("tiny_cnn"))
    order = np.random.default_rng(3).permutation(len(real.nodes))
    position = {int(old): new for new, old in enumerate(order)}
    shuffled = _graph(
        [real.nodes[int(old)] for old in order],
        [(position[a], position[b]) for a, b in real.edges[::-1]],
    )
    shuffled = GraphFeatures(**{**real.__dict__, "nodes": shuffled.nodes, "edges": shuffled.edges})
    assert operator_embedding(shuffled) == pytest.approx(operator_embedding(real), rel=1e-12)
    # ... but sees the wiring: the same nodes joined differently encode differently.
    rewired = GraphFeatures(**{**real.__dict__, "edges": [(0, i) for i in range(1, 14)]})
    assert not np.allclose(operator_embedding(rewired), operator_embedding(real))


@pytest.fixture(scope="module")
def cpu() -> Samples:
    return datasets.load("cpu-profiles", CPU_DATA)


@needs_cpu_data
def test_corunner_embedding_is_their_mean(cpu: Samples) -> None:
    q = cpu.queries
    assert covered_rows(q).all()  # every zoo model has its operator graph
    target, others = embeddings(q)
    assert others is not None
    triple = int(np.flatnonzero([c.count(";") == 1 for c in q.corunner])[0])
    names = str(q.corunner[triple]).split(";")
    members = [graph.model_embedding("cpu-profiles", n) for n in names]
    expected = np.mean([m for m in members if m is not None], axis=0)
    assert len(members) == 2 and len(expected) == len(operator_embedding_names())
    assert others[triple] == pytest.approx(expected)
    assert target[triple] == pytest.approx(graph.model_embedding("cpu-profiles", q.model[triple]))


@needs_cpu_data
def test_operator_backend_on_held_out_model_and_three_corunners(cpu: Samples) -> None:
    q = cpu.queries
    held = (q.model == "resnet50") | np.array(["resnet50" in str(c) for c in q.corunner])
    train = cpu.take(np.flatnonzero(~held).astype(np.intp))
    backend = GraphBackend()
    backend.fit(train)
    assert backend.encoding == "operator" and backend.profile is None
    assert set(backend.view_errors) == set(graph.VIEWS)  # chosen by inner held-out models
    assert backend.operator is not None
    assert backend.operator.view == min(backend.view_errors, key=backend.view_errors.__getitem__)
    test = cpu.take(np.flatnonzero(held).astype(np.intp))
    predicted = backend.predict(test.queries)
    assert backend.last_operator_rows == len(test) and backend.last_profile_rows == 0
    solo = score(test.target, test.queries.columns["solo_ms"])
    assert score(test.target, predicted).mae < solo.mae  # beats "no interference"
    # Three co-runners, a count no training row has: still one embedding width.
    book = ProfileBook(cpu)
    others = tuple(Placement(m, 1, 0.5) for m in ("resnet18", "tiny_bert", "bert"))
    rows = book.queries([Query(Placement("mobilenet_v2", 1, 0.5), others)])
    alone = rows.columns["solo_ms"][0]
    (latency,) = backend.predict(rows)
    assert np.isfinite(latency) and latency > alone
    assert backend.describe() == {
        "graph_operator_rows": 1.0,
        "graph_operator_view": float(list(graph.VIEWS).index(backend.operator.view)),
    }


@needs_cpu_data
def test_profile_graph_fallback_for_models_without_operator_graph(
    cpu: Samples, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = graph.model_embedding

    def without_bert(dataset: str, model: str) -> FloatArray | None:
        return None if model == "bert" else real(dataset, model)

    monkeypatch.setattr(graph, "model_embedding", without_bert)
    monkeypatch.setattr(GraphBackend, "min_models_to_choose", 99)  # keep the test fast
    with_bert = np.array(
        [
            m == "bert" or "bert" in str(c).split(";")
            for m, c in zip(cpu.queries.model, cpu.queries.corunner, strict=True)
        ]
    )
    backend = GraphBackend()
    backend.fit(cpu)
    assert backend.encoding == "operator+profile"
    assert backend.operator_fraction == pytest.approx(1 - with_bert.mean())
    assert backend.profile is not None and backend.operator is not None
    predicted = backend.predict(cpu.queries)
    assert np.isfinite(predicted).all()
    assert backend.last_profile_rows == with_bert.sum()
    bert_rows = cpu.take(np.flatnonzero(with_bert).astype(np.intp))
    assert predicted[with_bert] == pytest.approx(backend.profile.predict(bert_rows.queries))

    # No operator graph at all: the profile-graph backend alone.
    monkeypatch.setattr(graph, "model_embedding", lambda dataset, model: None)
    backend = GraphBackend()
    backend.fit(cpu)
    assert backend.encoding == "profile" and backend.operator is None
    assert backend.describe()["graph_operator_view"] == -1.0
    assert np.isfinite(backend.predict(cpu.queries)).all()


@needs_cpu_data
def test_fallback_fitted_lazily_for_a_query_without_operator_graph(
    cpu: Samples, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(GraphBackend, "min_models_to_choose", 99)
    backend = GraphBackend()
    backend.fit(cpu)
    assert backend.profile is None
    real = graph.model_embedding
    monkeypatch.setattr(
        graph, "model_embedding", lambda d, m: None if m == "tiny_bert" else real(d, m)
    )
    rows = cpu.queries.take(np.arange(len(cpu), dtype=np.intp))
    predicted = backend.predict(rows)
    assert backend.profile is not None and np.isfinite(predicted).all()
    assert backend.last_profile_rows > 0 and backend.last_operator_rows > 0


@needs_cpu_data
def test_service_metadata_says_operator_graphs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(GraphBackend, "min_models_to_choose", 99)
    core = PredictorCore(tmp_path / "artifacts")
    meta = core.train("cpu-profiles", CPU_DATA, "graph")
    assert meta.metrics["graph_operator_rows"] == 1.0
    assert meta.metrics["graph_operator_view"] == float(list(graph.VIEWS).index("sign"))
    restored = PredictorCore(tmp_path / "artifacts")
    assert restored.restore() == meta  # the pickle (with its lazy fallback data) loads
    query = Query(Placement("resnet18", 4, 0.5), (Placement("mobilenet_v2", 4, 0.5),))
    (answer,) = restored.predict([query])
    assert answer.latency_ms > 0 and np.isfinite(answer.slowdown)


@needs_cpu_data
def test_full_embedding_when_no_inner_fold_can_choose(
    cpu: Samples, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(graph, "view_errors", lambda samples: {})  # every model in every pair
    backend = GraphBackend()
    backend.fit(cpu.take(np.arange(0, len(cpu), 2, dtype=np.intp)))
    assert backend.operator is not None and backend.operator.view == "sign"


def test_ranking_candidates_thin_averaging_ensembles_only() -> None:
    from sklearn.ensemble import ExtraTreesRegressor, HistGradientBoostingRegressor

    from services.predictor.backends.amplitude import AmplitudeShapeRegressor, MeanRegressor
    from services.predictor.backends.residual import ResidualRegressor

    def trees(count: int) -> ExtraTreesRegressor:
        return ExtraTreesRegressor(n_estimators=count)

    composite = MeanRegressor(
        [
            ResidualRegressor(1, trees(200)),
            AmplitudeShapeRegressor([0], lambda: trees(300), lambda: trees(40)),
        ]
    )
    thinned = graph.thinned(composite, 0.25)
    assert thinned is composite  # in place
    residual, amplitude = composite.members
    assert residual.trees.n_estimators == 50
    assert amplitude.amplitude.n_estimators == 75
    assert amplitude.shape.n_estimators == graph.MIN_RANKING_TREES  # never below the floor
    boosting = HistGradientBoostingRegressor(max_iter=150)
    assert graph.thinned(boosting, 0.25).max_iter == 150  # fewer rounds: another model


@needs_cpu_data
def test_views_ranked_on_subsampled_inner_folds(
    cpu: Samples, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes: list[int] = []
    fit_once = graph.OperatorGraphBackend._fit_once

    def spy(self: graph.OperatorGraphBackend, samples: Samples) -> tuple[object, float]:
        sizes.append(len(samples))
        return fit_once(self, samples)

    monkeypatch.setattr(graph.OperatorGraphBackend, "_fit_once", spy)
    graph.view_errors(cpu)
    full = sorted(set(sizes))
    assert len(full) > 1  # inner training folds of several sizes
    sizes.clear()
    monkeypatch.setattr(graph, "RANKING_ROWS", full[-1] - 1)
    errors = graph.view_errors(cpu)
    assert set(errors) == set(graph.VIEWS) and all(np.isfinite(list(errors.values())))
    assert sorted(set(sizes)) == [*full[:-1], full[-1] - 1]  # only the largest is cut
