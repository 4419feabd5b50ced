"""Shape-only architecture graphs and `operator_graph`: every data-set model resolves, sizes
match the published parameter and MAC counts, graphs are valid ONNX, the cache round-trips."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto

from deinfer.zoo import architectures
from deinfer.zoo.architectures.spec import checkable
from services.common.onnx_graph import GraphFeatures, graph_features
from services.predictor import operator_graphs
from services.predictor.operator_graphs import known_models, operator_graph
from tests.conftest import SHARED_DATA

# (params in millions, MACs per 224x224 image in billions, or None where the published
# figure is for another resolution): torchvision's model documentation and the papers.
PUBLISHED: dict[str, tuple[float, float | None]] = {
    "alexnet": (61.10, 0.71),
    "resnet18": (11.69, 1.81),
    "resnet50": (25.56, 4.09),
    "resnet152": (60.19, 11.51),
    "resnext50_32x4d": (25.03, 4.23),
    "wide_resnet50_2": (68.88, 11.40),
    "vgg16": (138.36, 15.47),
    "vgg19_bn": (143.68, 19.63),
    "squeezenet1_0": (1.25, 0.82),
    "squeezenet1_1": (1.24, 0.35),
    "mobilenet_v2": (3.50, 0.30),
    "mobilenet_v3_large": (5.48, 0.22),
    "mnasnet1_0": (4.38, 0.31),
    "shufflenet_v2_x1_0": (2.28, 0.146),
    "efficientnet_b0": (5.29, 0.39),
    "efficientnet_b7": (66.35, None),
    "efficientnet_v2_s": (21.46, None),
    "regnet_x_400mf": (5.50, 0.41),
    "regnet_y_400mf": (4.34, 0.40),
    "regnet_y_8gf": (39.38, 8.47),
    "regnet_y_128gf": (644.81, 127.52),
    "densenet121": (7.98, 2.83),
    "densenet201": (20.01, 4.29),
    "convnext_tiny": (28.59, 4.46),
    "convnext_large": (197.77, 34.36),
    # 27.16 M with the training-only auxiliary head, which the inference graph lacks.
    "inception_v3": (27.16 - 3.35, 5.71),
}
TOLERANCE = 0.03


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv(operator_graphs.CACHE_ENV, str(tmp_path / "cache"))
    operator_graphs.clear_memory_cache()
    yield
    operator_graphs.clear_memory_cache()


@pytest.fixture(scope="module")
def features() -> dict[str, GraphFeatures]:
    """Features of the PUBLISHED architectures (BatchNorm folded), built once."""
    return {name: graph_features(architectures.build(name)) for name in PUBLISHED}


def _data_set_models() -> dict[str, set[str]]:
    """Model names as they appear in the public files."""
    names: dict[str, set[str]] = {}
    deinfer = SHARED_DATA / "deinfer-rtx3080"
    with (deinfer / "model_interference_feature2.csv").open() as f:
        rows = list(csv.DictReader(f))
    names["deinfer-rtx3080"] = {r["modelname1"] for r in rows} | {r["modelname2"] for r in rows}
    static = deinfer / "modelRepository" / "model_L2_gflops.csv"
    if static.exists():
        with static.open() as f:
            names["deinfer-rtx3080"] |= {r["modelname"] for r in csv.DictReader(f)}
    with (SHARED_DATA / "igniter-v100" / "gpulet.config").open() as f:
        names["igniter-v100"] = {key for line in f if line.strip() for key in json.loads(line)}
    names["igniter-v100"].discard("interference")
    with (SHARED_DATA / "rapp-v100" / "rapp_profiles_flat.csv").open() as f:
        names["rapp-v100"] = {r["model_name"] for r in csv.DictReader(f)}
    return names


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="public data not available")
def test_every_data_set_model_resolves_to_a_graph() -> None:
    found = _data_set_models()
    assert len(found["rapp-v100"]) >= 57 and {"ssd", "vgg19"} <= found["igniter-v100"]
    for dataset, models in found.items():
        assert models <= set(known_models(dataset)), dataset
        for model in sorted(models):
            f = operator_graph(dataset, model)
            assert f.macs > 0 and f.params > 0 and f.unresolved_tensors == 0, (dataset, model)


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="public data not available")
def test_deinfer_models_match_the_sizes_in_its_table() -> None:
    """DeInfer's table has thop's counts: parameters / 2^20 and MACs per batch / 2^30."""
    path = SHARED_DATA / "deinfer-rtx3080" / "model_interference_feature2.csv"
    with path.open() as table:
        sizes = {
            row[f"modelname{s}"]: (
                float(row[f"model_para{s}"]) * 2**20,
                float(row[f"model_gflops{s}"]) * 2**30 / int(row[f"batchsize{s}"]),
            )
            for row in csv.DictReader(table)
            for s in "12"
        }
    # thop skips nn.MultiheadAttention: the transformer is checked term by term below.
    sizes.pop("transformer", None)
    assert len(sizes) >= 10
    for model, (params, macs) in sizes.items():
        f = operator_graph("deinfer-rtx3080", model)
        # Folding BatchNorm leaves one bias per channel where PyTorch has scale and shift.
        assert f.params == pytest.approx(params, rel=0.005), model
        # thop also counts BatchNorm and activations as MACs.
        assert f.macs == pytest.approx(macs, rel=0.1) and f.macs <= macs * 1.001, model


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_sizes_match_published_values(name: str, features: dict[str, GraphFeatures]) -> None:
    params, macs = PUBLISHED[name]
    f = features[name]
    assert f.params / 1e6 == pytest.approx(params, rel=TOLERANCE)
    if macs is not None:
        assert f.macs / 1e9 == pytest.approx(macs, rel=TOLERANCE)


def test_deinfer_sequence_models_match_its_table() -> None:
    # LSTM-2: 2 x LSTM(hidden 100) over 100 steps of 50 features, Linear(100 -> 1).
    lstm = operator_graph("deinfer-rtx3080", "LSTM-2")
    assert lstm.params == 141_701  # DeInfer's model_para 0.135137 Mi x 2^20
    assert lstm.macs == 100 * (4 * 100 * (50 + 100) + 4 * 100 * (100 + 100)) + 100
    assert lstm.op_histogram["LSTM"] == 2
    # Transformer: 6 post-norm layers, width 512, FFN 2048, 50 tokens.
    t = operator_graph("deinfer-rtx3080", "transformer")
    per_layer = 4 * (512 * 512 + 512) + 2 * 512 * 2048 + 2048 + 512 + 2 * 2 * 512
    assert t.params == 6 * per_layer + 1  # + the attention scale, a float constant
    projections = 50 * (4 * 512 * 512 + 2 * 512 * 2048)
    attention = 2 * 8 * 50 * 50 * 64
    assert t.macs == 6 * (projections + attention)
    assert t.input_shapes == {"input": [1, 50, 512]}


def test_ssd_outputs_match_igniter_transfer_sizes() -> None:
    model = architectures.build("ssd300_resnet50")
    shapes = [[d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output]
    assert [shape[1:] for shape in shapes] == [[4, 8732], [81, 8732]]
    # iGniter's config: 1,080,000 input and 2,968,880 output bytes per image (fp32).
    assert sum(math.prod(shape[1:]) for shape in shapes) * 4 == 2_968_880
    f = operator_graph("igniter-v100", "ssd")
    assert math.prod(f.input_shapes["input"]) * 4 == 1_080_000


def test_batchnorm_follows_the_runtime_of_each_data_set() -> None:
    eager = operator_graph("rapp-v100", "resnet50")
    fused = operator_graph("igniter-v100", "resnet50")
    assert eager.op_histogram["BatchNormalization"] == fused.op_histogram["Conv"] == 53
    assert "BatchNormalization" not in fused.op_histogram
    assert eager.macs == fused.macs


VALIDATED = [
    "resnext50_32x4d",
    "shufflenet_v2_x1_0",
    "efficientnet_v2_s",
    "regnet_y_400mf",
    "densenet121",
    "convnext_tiny",
    "inception_v3",
    "mobilenet_v3_small",
    "squeezenet1_0",
    "ssd300_resnet50",
    "lstm2",
    "transformer_encoder6",
    "vgg11_bn",
    "mnasnet0_5",
]


@pytest.mark.parametrize("name", VALIDATED)
@pytest.mark.parametrize("fold", [True, False])
def test_graphs_are_valid_onnx(name: str, fold: bool) -> None:
    onnx.checker.check_model(checkable(architectures.build(name, fold)), full_check=True)


def test_weights_are_declared_not_materialised() -> None:
    model = architectures.build("regnet_y_128gf")
    weights = [t for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    assert sum(t.raw_data == b"" for t in weights) == len(weights) > 250
    assert model.ByteSize() < 1_000_000  # ~645 M parameters would be 2.6 GB
    assert graph_features(model).weight_bytes > 2.5e9


def test_disk_cache_round_trips_without_rebuilding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = operator_graph("deinfer-rtx3080", "squeezenet-1.1")
    files = list((tmp_path / "cache" / "operator_graphs").rglob("squeezenet-1.1.json"))
    assert len(files) == 1
    operator_graphs.clear_memory_cache()

    def no_build(name: str, fold_batchnorm: bool = True) -> onnx.ModelProto:
        raise AssertionError("rebuilt despite the disk cache")

    monkeypatch.setattr(architectures, "build", no_build)
    assert operator_graph("deinfer-rtx3080", "squeezenet-1.1") == first
    # An unreadable entry is ignored and rebuilt.
    monkeypatch.undo()
    monkeypatch.setenv(operator_graphs.CACHE_ENV, str(tmp_path / "cache"))
    files[0].write_text("{not json")
    operator_graphs.clear_memory_cache()
    assert operator_graph("deinfer-rtx3080", "squeezenet-1.1") == first


def test_aliases_share_one_architecture() -> None:
    a = operator_graph("deinfer-rtx3080", "squeezenet")
    b = operator_graph("deinfer-rtx3080", "squeezenet-1.0")
    assert a == b and a.macs != operator_graph("deinfer-rtx3080", "squeezenet-1.1").macs


def test_cpu_profiles_use_the_runnable_zoo_model() -> None:
    f = operator_graph("cpu-profiles", "tiny_bert")
    assert f.input_shapes["input_ids"] == [1, 128] and f.op_histogram["MatMul"] > 0


def test_unknown_names_are_refused() -> None:
    with pytest.raises(KeyError, match="resnet-9"):
        operator_graph("deinfer-rtx3080", "resnet-9")
    with pytest.raises(KeyError, match="ssd"):
        operator_graph("rapp-v100", "ssd300_resnet50")  # not a RaPP (torchvision) name
    with pytest.raises(ValueError, match="no operator graphs"):
        operator_graph("nope", "resnet50")
    with pytest.raises(KeyError, match="unknown architecture"):
        architectures.build("resnet9")
