"""Static graph features: tiny hand-built graphs whose numbers are worked out by hand, and the
zoo models against their published sizes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deinfer.zoo import build_model
from services.common.onnx_graph import graph_features, longest_path


def _model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: dict[str, np.ndarray],
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        inputs,
        outputs,
        initializer=[numpy_helper.from_array(v, k) for k, v in initializers.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _float(name: str, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def test_conv_with_bias_counted_by_hand() -> None:
    # [N,3,8,8] * W[4,3,3,3] (pad 1) + b[4] -> [1,4,8,8] = 256 outputs, 27 MACs each.
    model = _model(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1], name="conv")],
        [_float("x", ["N", 3, 8, 8])],
        [_float("y", ["N", 4, 8, 8])],
        {"w": np.zeros((4, 3, 3, 3), np.float32), "b": np.zeros(4, np.float32)},
    )
    f = graph_features(model)
    assert f.input_shapes == {"x": [1, 3, 8, 8]}
    assert f.macs == 256 * 27
    assert f.flops == 2 * 256 * 27 + 256  # 2 per MAC + one bias add per output
    assert f.params == 4 * 27 + 4
    assert f.bytes_moved == (192 + 108 + 4 + 256) * 4  # x, w, b read; y written
    assert f.op_histogram == {"Conv": 1}
    assert f.depth == 1
    assert f.nodes[0].params == 112
    assert f.edges == []


def test_matmul_chain_uses_the_sequence_length_for_other_symbolic_dims() -> None:
    # x [1,S=3,5] @ w [5,7] -> [1,3,7]: 21 outputs x 5 MACs; + bias (21); Relu (21).
    model = _model(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("Add", ["h", "b"], ["z"]),
            helper.make_node("Relu", ["z"], ["y"]),
        ],
        [_float("x", ["N", "S", 5])],
        [_float("y", ["N", "S", 7])],
        {"w": np.zeros((5, 7), np.float32), "b": np.zeros(7, np.float32)},
    )
    f = graph_features(model, sequence_length=3)
    assert f.input_shapes == {"x": [1, 3, 5]}
    assert f.macs == 105
    assert f.flops == 210 + 21 + 21
    assert f.params == 35 + 7
    assert f.depth == 3
    assert f.edges == [(0, 1), (1, 2)]
    assert [n.flops for n in f.nodes] == [210, 21, 21]
    # MatMul reads x (15) and w (35), writes h (21) -> 71 floats.
    assert f.nodes[0].bytes == 71 * 4


def test_gemm_pool_reduce_softmax_by_hand() -> None:
    model = _model(
        [
            helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
            helper.make_node("GlobalAveragePool", ["p"], ["g"]),
            helper.make_node("Flatten", ["g"], ["f"]),
            helper.make_node("Gemm", ["f", "w", "c"], ["o"], transB=1),
            helper.make_node("Softmax", ["o"], ["y"]),
        ],
        [_float("x", [1, 2, 4, 4])],
        [_float("y", [1, 3])],
        {"w": np.zeros((3, 2), np.float32), "c": np.zeros(3, np.float32)},
    )
    f = graph_features(model)
    pool = 2 * 2 * 2 * 4  # 8 outputs x 4 window elements
    gap = 2 * 2 * 2  # one per input element
    gemm = 2 * 3 * 2 + 3  # [1,2] x [2,3]^T: 6 MACs, + bias
    softmax = 3 * 3
    assert f.macs == 6
    assert f.flops == pool + gap + gemm + softmax
    assert [n.flops for n in f.nodes] == [pool, gap, 0, gemm, softmax]
    assert f.depth == 5


def test_depth_is_the_longest_path_not_the_node_count() -> None:
    # a = relu(x); c = sigmoid(relu(a)); y = a + c: longest path relu, relu, sigmoid, add.
    model = _model(
        [
            helper.make_node("Relu", ["x"], ["a"]),
            helper.make_node("Relu", ["a"], ["b"]),
            helper.make_node("Sigmoid", ["b"], ["c"]),
            helper.make_node("Add", ["a", "c"], ["y"]),
            helper.make_node("Neg", ["x"], ["side"]),
        ],
        [_float("x", [1, 4])],
        [_float("y", [1, 4]), _float("side", [1, 4])],
        {},
    )
    f = graph_features(model)
    assert f.depth == 4
    assert f.edges == [(0, 1), (0, 3), (1, 2), (2, 3)]
    assert f.op_histogram == {"Relu": 2, "Sigmoid": 1, "Add": 1, "Neg": 1}


def test_gather_reads_only_the_selected_rows() -> None:
    model = _model(
        [helper.make_node("Gather", ["table", "ids"], ["y"], axis=0)],
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", "S"])],
        [_float("y", ["N", "S", 4])],
        {"table": np.zeros((1000, 4), np.float32)},
    )
    f = graph_features(model, sequence_length=2)
    written = 1 * 2 * 4 * 4
    assert f.bytes_moved == written + 2 * 8 + written  # rows read, ids read, output written
    assert f.params == 4000
    assert f.flops == 0


def test_longest_path_rejects_cycles_and_handles_empty_graphs() -> None:
    assert longest_path(0, []) == 0
    assert longest_path(3, []) == 1
    with pytest.raises(ValueError, match="cycle"):
        longest_path(2, [(0, 1), (1, 0)])


def test_sequence_length_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        graph_features(_model([], [], [], {}), sequence_length=0)


def test_resnet18_matches_its_published_size() -> None:
    f = graph_features(build_model("resnet18"))
    assert 1.80e9 < f.macs < 1.83e9  # the "1.8 GFLOPs" usually quoted are MACs
    assert 3.6e9 < f.flops < 3.7e9
    assert 11.6e6 < f.params < 11.8e6
    assert f.op_histogram["Conv"] == 20
    assert f.unresolved_tensors == 0
    assert len(f.nodes) == sum(f.op_histogram.values())


def test_mobilenet_v2_matches_its_published_size() -> None:
    f = graph_features(build_model("mobilenet_v2"))
    assert 3.4e6 < f.params < 3.6e6
    assert 0.29e9 < f.macs < 0.32e9
    assert f.depth > 50


def test_bert_shapes_follow_the_sequence_length() -> None:
    short = graph_features(build_model("tiny_bert"), sequence_length=16)
    long = graph_features(build_model("tiny_bert"), sequence_length=64)
    assert short.input_shapes["input_ids"] == [1, 16]
    # Linear layers scale with the tokens, attention scores with their square: more than 4x.
    assert long.flops > 4 * short.flops
    assert long.params == short.params
