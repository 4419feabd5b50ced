"""Model zoo: every model builds, validates, runs under ORT (ENABLE_ALL) and is deterministic."""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest

from deinfer.zoo import ZOO_MODELS, build_model, list_models, save_model
from deinfer.zoo.bert import BERT_CONFIG, TINY_BERT_CONFIG, BertConfig
from deinfer.zoo.cli import add_zoo_cli

ALL_MODELS = ("bert", "mobilenet_v2", "resnet18", "resnet50", "tiny_bert", "tiny_cnn", "vgg16")
IMAGE_MODELS = ("resnet18", "resnet50", "mobilenet_v2", "vgg16")
TINY_MODELS = ("tiny_cnn", "tiny_bert")
BERT_CONFIGS = {"bert": BERT_CONFIG, "tiny_bert": TINY_BERT_CONFIG}
# The two slowest models run at batch 1 only, to keep this file fast on a 2-core machine.
BATCH1_ONLY = {"resnet50", "vgg16"}
SEQ = 12
MASKED_TAIL = 3  # trailing padding positions per row in BERT feeds

# torchvision's parameter counts. Folding BN leaves one bias per channel where torchvision
# has gamma and beta, so zoo parameters + conv biases must add up to exactly these.
TORCHVISION_PARAMS = {
    "resnet18": 11_689_512,
    "resnet50": 25_557_032,
    "mobilenet_v2": 3_504_872,
    "vgg16": 138_357_544,  # no BatchNorm: conv biases are real parameters
}
OP_COUNTS = {
    "resnet18": {"Conv": 20, "Add": 8, "MaxPool": 1, "Gemm": 1},
    "resnet50": {"Conv": 53, "Add": 16, "MaxPool": 1, "Gemm": 1},
    "mobilenet_v2": {"Conv": 52, "Add": 10, "Clip": 35, "Gemm": 1},
    "vgg16": {"Conv": 13, "MaxPool": 5, "Gemm": 3},
    "tiny_cnn": {"Conv": 4, "Add": 1, "Gemm": 1},
    "bert": {"Softmax": 4, "LayerNormalization": 9, "Erf": 4},
    "tiny_bert": {"Softmax": 2, "LayerNormalization": 5, "Erf": 2},
}

Feeds = dict[str, npt.NDArray[np.generic]]


@dataclass
class Built:
    name: str
    model: onnx.ModelProto
    data: bytes
    session: ort.InferenceSession


def make_session(data: bytes) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def make_feeds(name: str, batch: int, seed: int = 0) -> Feeds:
    rng = np.random.default_rng(seed)
    if name in BERT_CONFIGS:
        ids = rng.integers(0, TINY_BERT_CONFIG.vocab, (batch, SEQ), dtype=np.int64)
        mask = np.ones((batch, SEQ), dtype=np.int64)
        mask[:, SEQ - MASKED_TAIL :] = 0
        return {"input_ids": ids, "attention_mask": mask}
    side = 32 if name == "tiny_cnn" else 224
    return {"input": rng.standard_normal((batch, 3, side, side), dtype=np.float32)}


def expected_shapes(name: str, batch: int) -> dict[str, tuple[int, ...]]:
    if name in BERT_CONFIGS:
        hidden = BERT_CONFIGS[name].hidden
        return {"last_hidden_state": (batch, SEQ, hidden), "pooled": (batch, hidden)}
    return {"output": (batch, 10 if name == "tiny_cnn" else 1000)}


def run(session: ort.InferenceSession, feeds: Feeds) -> dict[str, npt.NDArray[np.float32]]:
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def param_sizes(model: onnx.ModelProto) -> dict[str, int]:
    """Element count per weight, leaving out the builder's shared shape/scalar constants."""
    return {
        t.name: int(np.prod(t.dims))
        for t in model.graph.initializer
        if not t.name.startswith("const")
    }


def bert_params(cfg: BertConfig) -> int:
    h, i = cfg.hidden, cfg.intermediate
    embeddings = cfg.vocab * h + cfg.max_positions * h + h + 2 * h
    layer = 4 * (h * h + h) + (h * i + i) + (i * h + h) + 2 * 2 * h
    return embeddings + cfg.layers * layer + (h * h + h)


@pytest.fixture(scope="module", params=ALL_MODELS)
def built(request: pytest.FixtureRequest) -> Iterator[Built]:
    # Module scope + params makes pytest run every test of one model before building the
    # next, so only one model (vgg16 is ~550 MB) is held at a time and each builds once.
    name: str = request.param
    model = build_model(name)
    data = model.SerializeToString()
    yield Built(name, model, data, make_session(data))


def test_registry_lists_every_model() -> None:
    assert list_models() == sorted(ALL_MODELS)
    assert set(ZOO_MODELS) == set(ALL_MODELS)
    for name, entry in ZOO_MODELS.items():
        assert entry.name == name and entry.description


def test_passes_onnx_checker(built: Built) -> None:
    onnx.checker.check_model(built.data, full_check=True)
    assert built.model.ir_version in (8, 9)
    assert [(op.domain, op.version) for op in built.model.opset_import] == [("", 17)]


def test_signature_has_dynamic_batch(built: Built) -> None:
    graph = built.model.graph
    for value in [*graph.input, *graph.output]:
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"
    inputs = {v.name: v.type.tensor_type.elem_type for v in graph.input}
    if built.name in BERT_CONFIGS:
        int64 = onnx.TensorProto.INT64
        assert inputs == {"input_ids": int64, "attention_mask": int64}
        assert graph.input[0].type.tensor_type.shape.dim[1].dim_param == "seq"
    else:
        assert inputs == {"input": onnx.TensorProto.FLOAT}
    assert [v.name for v in graph.output] == list(expected_shapes(built.name, 1))


def test_architecture(built: Built) -> None:
    ops = [n.op_type for n in built.model.graph.node]
    for op_type, count in OP_COUNTS[built.name].items():
        assert ops.count(op_type) == count, op_type


def test_parameter_count(built: Built) -> None:
    sizes = param_sizes(built.model)
    total = sum(sizes.values())
    if built.name == "vgg16":
        assert total == TORCHVISION_PARAMS["vgg16"]
    elif built.name in TORCHVISION_PARAMS:
        conv_biases = sum(v for k, v in sizes.items() if k.startswith("conv_b"))
        assert total + conv_biases == TORCHVISION_PARAMS[built.name]
    elif built.name in BERT_CONFIGS:
        assert total == bert_params(BERT_CONFIGS[built.name])
    else:
        assert total == (3 * 8 * 9 + 8) + (8 * 16 * 9 + 16) + 2 * (16 * 16 * 9 + 16) + 16 * 10 + 10


def test_runs_under_ort(built: Built) -> None:
    check_outputs(built, make_feeds(built.name, 1), batch=1)
    if built.name in BATCH1_ONLY:
        return
    feeds = make_feeds(built.name, 3)
    batched = check_outputs(built, feeds, batch=3)
    # Rows must not interact: row 0 of a batch-3 run equals a batch-1 run on that row.
    single = run(built.session, {k: v[:1] for k, v in feeds.items()})
    for key, value in single.items():
        np.testing.assert_allclose(batched[key][:1], value, rtol=1e-4, atol=1e-4)


def check_outputs(built: Built, feeds: Feeds, batch: int) -> dict[str, npt.NDArray[np.float32]]:
    outputs = run(built.session, feeds)
    assert {k: v.shape for k, v in outputs.items()} == expected_shapes(built.name, batch)
    for value in outputs.values():
        assert value.dtype == np.float32
        assert np.isfinite(value).all()
        assert float(value.std()) > 1e-3  # not collapsed to a constant
    return outputs


@pytest.mark.parametrize("name", sorted(BERT_CONFIGS))
def test_bert_attention_mask_hides_padding(name: str) -> None:
    session = make_session(build_model(name).SerializeToString())
    feeds = make_feeds(name, 2)
    ids = np.array(feeds["input_ids"], dtype=np.int64)
    ids[:, SEQ - MASKED_TAIL :] += 1  # only padded positions differ
    changed = {**feeds, "input_ids": ids}
    keep = slice(0, SEQ - MASKED_TAIL)
    base = run(session, feeds)["last_hidden_state"][:, keep]
    other = run(session, changed)["last_hidden_state"][:, keep]
    np.testing.assert_allclose(base, other, rtol=1e-4, atol=1e-4)
    # Sanity check of the check: unmasking the padding does change visible tokens.
    unmasked = {**changed, "attention_mask": np.ones_like(feeds["attention_mask"])}
    assert not np.allclose(run(session, unmasked)["last_hidden_state"][:, keep], base, atol=1e-4)


@pytest.mark.parametrize("name", TINY_MODELS)
def test_save_model_is_deterministic(name: str, tmp_path: Path) -> None:
    first = save_model(name, tmp_path / "a", seed=7)
    second = save_model(name, tmp_path / "b", seed=7)
    other_seed = save_model(name, tmp_path / "c", seed=8)
    assert first == tmp_path / "a" / f"{name}.onnx"
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes() != other_seed.read_bytes()


def test_full_size_build_is_deterministic() -> None:
    a, b = (build_model("mobilenet_v2", seed=3).SerializeToString() for _ in range(2))
    assert a == b


@pytest.mark.parametrize("name", TINY_MODELS)
def test_tiny_models_are_small_and_fast(name: str) -> None:
    data = build_model(name).SerializeToString()
    assert len(data) < 1_000_000
    session = make_session(data)
    feeds = make_feeds(name, 1)
    for _ in range(5):
        run(session, feeds)
    timings = []
    for _ in range(50):
        start = time.perf_counter()
        run(session, feeds)
        timings.append(time.perf_counter() - start)
    assert float(np.median(timings)) < 1e-3


def test_unknown_name_lists_known_models(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no_such_model") as info:
        save_model("no_such_model", tmp_path)
    for name in ALL_MODELS:
        assert name in str(info.value)
    with pytest.raises(ValueError, match="known models"):
        build_model("no_such_model")
    assert not any(tmp_path.iterdir())


def zoo_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deinfer")
    add_zoo_cli(parser.add_subparsers(dest="command", required=True))
    return parser


def run_cli(argv: list[str]) -> int:
    args = zoo_parser().parse_args(argv)
    code: int = args.func(args)
    return code


def test_cli_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    for name in ALL_MODELS:
        assert name in out


def test_cli_build(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["zoo", "build", "tiny_bert", "--out", str(tmp_path), "--seed", "2"]) == 0
    out = capsys.readouterr().out
    path = tmp_path / "tiny_bert.onnx"
    assert path.read_bytes() == build_model("tiny_bert", seed=2).SerializeToString()
    assert str(path) in out and "MB" in out
    assert "input_ids: int64 [batch, seq]" in out
    assert "last_hidden_state: float32 [batch, seq, 32]" in out


def test_cli_build_unknown_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["zoo", "build", "nope", "--out", str(tmp_path)]) == 2
    assert "known models" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
