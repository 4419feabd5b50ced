"""Static features of an ONNX graph: FLOPs, parameters, bytes moved, operators, depth.

The profiler stores the model-level totals with every profile; the predictor's graph backend
uses the per-node table and the edge list as a graph. Everything is computed for ONE sample:
graph inputs get batch 1 on their first symbolic dimension and `sequence_length` on every
other symbolic dimension, then ONNX shape inference gives every tensor's shape.

Conventions (per sample):
- `macs`: multiply-accumulates of Conv, ConvTranspose, Gemm and MatMul (the "1.8 G" usually
  quoted for ResNet-18 at 224x224 is this number), and of the gate projections of LSTM, GRU
  and RNN over every step.
- `flops`: 2 x macs, plus one FLOP per output element of bias adds and elementwise ops, a
  fixed small cost per element for normalisation and softmax, and one per window element for
  pooling and reductions (`ELEMENT_COST`, `POOL_OPS`). Data movement (Reshape, Gather,
  Concat, ...) costs no FLOPs but does move bytes.
- `bytes_moved`: per node, the bytes of every input it reads (weights included) plus every
  output it writes, summed over the nodes. Shape-only ops (Shape, Size) read no data;
  gathers read only the rows they select (as many bytes as they write) plus the indices.
- `params`: elements of floating-point initializers (each counted once).
- `depth`: nodes on the longest path from an input to an output.
Control-flow subgraphs (If, Loop, Scan) are counted as one node of zero FLOPs. A tensor whose
shape inference cannot resolve a dimension (e.g. the output of Range over the sequence)
gets `sequence_length` for it; `unresolved_tensors` counts how often that happened.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, shape_inference

DEFAULT_SEQUENCE_LENGTH = 128

# Ops doing a multiply-accumulate per weight use: counted in `macs`.
MAC_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})

# One FLOP per output element.
ELEMENTWISE = [
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Pow",
    "Sqrt",
    "Reciprocal",
    "Relu",
    "LeakyRelu",
    "PRelu",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Tanh",
    "Erf",
    "Exp",
    "Log",
    "Neg",
    "Abs",
    "Clip",
    "Max",
    "Min",
    "Sum",
    "Mean",
    "Where",
    "Equal",
    "Less",
    "Greater",
    "LessOrEqual",
    "GreaterOrEqual",
    "Not",
    "And",
    "Or",
    "Xor",
    "Elu",
    "Selu",
    "Celu",
    "Softplus",
    "Softsign",
    "Gelu",
    "Floor",
    "Ceil",
    "Round",
    "Sign",
    "Mod",
    "Resize",
    "Upsample",
    "Dropout",
]

# FLOPs per output element.
ELEMENT_COST: dict[str, float] = {
    **dict.fromkeys(ELEMENTWISE, 1.0),
    # x * scale' + shift' once the statistics are folded.
    "BatchNormalization": 2.0,
    # mean, variance, normalise, scale, shift.
    "LayerNormalization": 5.0,
    "InstanceNormalization": 5.0,
    "GroupNormalization": 5.0,
    # exp, sum, divide.
    "Softmax": 3.0,
    "LogSoftmax": 3.0,
}

# One FLOP per element of each pooling window (cost per output element = window size).
POOL_OPS = frozenset({"MaxPool", "AveragePool", "LpPool"})
# One FLOP per input element.
INPUT_REDUCTIONS = frozenset(
    {
        "GlobalAveragePool",
        "GlobalMaxPool",
        "GlobalLpPool",
        "ReduceMean",
        "ReduceSum",
        "ReduceMax",
        "ReduceMin",
        "ReduceProd",
        "ReduceL1",
        "ReduceL2",
        "ReduceSumSquare",
        "ReduceLogSumExp",
        "ArgMax",
        "ArgMin",
    }
)
# Recurrent layers: gates per step, each projecting the input and the hidden state.
RECURRENT_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
# Their FLOPs per hidden unit, step and direction besides the projections: bias adds, gate
# activations and the state update (LSTM: 8 + 4 + 3 + tanh + 1; GRU: 6 + 3 + 5; RNN: 2 + 1).
RECURRENT_ELEMENT_COST = {"LSTM": 17.0, "GRU": 14.0, "RNN": 3.0}
# Ops that look only at their input's shape, never its data.
SHAPE_ONLY = frozenset({"Shape", "Size"})
# Ops that read only the rows their indices select: the table costs what they write.
GATHERS = frozenset({"Gather", "GatherElements", "GatherND"})

FLOAT_TYPES = frozenset(
    {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.BFLOAT16,
        onnx.TensorProto.DOUBLE,
    }
)


@dataclass(frozen=True)
class NodeFeatures:
    name: str
    op_type: str
    flops: float
    macs: float
    bytes: int  # inputs read + outputs written
    params: int  # floating-point initializer elements this node reads


@dataclass(frozen=True)
class GraphFeatures:
    flops: float
    macs: float
    params: int
    bytes_moved: int
    weight_bytes: int  # bytes of every initializer
    op_histogram: dict[str, int]
    depth: int
    nodes: list[NodeFeatures]
    edges: list[tuple[int, int]]  # (producer, consumer) indices into `nodes`
    input_shapes: dict[str, list[int]]  # the shapes the features were computed for
    unresolved_tensors: int = 0
    sequence_length: int = DEFAULT_SEQUENCE_LENGTH


@dataclass
class _Tensor:
    shape: list[int]
    elem_type: int

    @property
    def elements(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.elements * _itemsize(self.elem_type)


def _itemsize(elem_type: int) -> int:
    if elem_type == onnx.TensorProto.STRING or elem_type == onnx.TensorProto.UNDEFINED:
        return 0
    return int(np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).itemsize)


def load(source: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    if isinstance(source, onnx.ModelProto):
        return source
    return onnx.load(str(source))


def fix_input_shapes(model: onnx.ModelProto, sequence_length: int) -> dict[str, list[int]]:
    """Pin symbolic input dims in place: first -> 1 (batch), others -> sequence_length."""
    initializers = {i.name for i in model.graph.initializer}
    shapes: dict[str, list[int]] = {}
    for graph_input in model.graph.input:
        if graph_input.name in initializers or not graph_input.type.HasField("tensor_type"):
            continue
        dims = graph_input.type.tensor_type.shape.dim
        for index, dim in enumerate(dims):
            if not dim.HasField("dim_value") or dim.dim_value <= 0:
                dim.dim_value = 1 if index == 0 else sequence_length
        shapes[graph_input.name] = [d.dim_value for d in dims]
    return shapes


def graph_features(
    source: onnx.ModelProto | str | Path, sequence_length: int = DEFAULT_SEQUENCE_LENGTH
) -> GraphFeatures:
    if sequence_length <= 0:
        raise ValueError(f"sequence_length must be positive, got {sequence_length}")
    model = onnx.ModelProto()
    model.CopyFrom(load(source))  # the caller's model keeps its symbolic dims
    input_shapes = fix_input_shapes(model, sequence_length)
    inferred = shape_inference.infer_shapes(model, data_prop=True)
    tensors, unresolved = _tensor_table(inferred, sequence_length)
    float_initializers = {i.name for i in inferred.graph.initializer if i.data_type in FLOAT_TYPES}
    nodes = [
        _node_features(index, node, tensors, float_initializers)
        for index, node in enumerate(inferred.graph.node)
    ]
    edges = _edges(inferred.graph.node)
    params = sum(tensors[name].elements for name in float_initializers)
    weight_bytes = sum(tensors[i.name].nbytes for i in inferred.graph.initializer)
    return GraphFeatures(
        flops=sum(n.flops for n in nodes),
        macs=sum(n.macs for n in nodes),
        params=params,
        bytes_moved=sum(n.bytes for n in nodes),
        weight_bytes=weight_bytes,
        op_histogram=dict(Counter(n.op_type for n in nodes)),
        depth=longest_path(len(nodes), edges),
        nodes=nodes,
        edges=edges,
        input_shapes=input_shapes,
        unresolved_tensors=unresolved,
        sequence_length=sequence_length,
    )


def _tensor_table(model: onnx.ModelProto, fallback_dim: int) -> tuple[dict[str, _Tensor], int]:
    tensors: dict[str, _Tensor] = {}
    unresolved = 0
    for init in model.graph.initializer:
        tensors[init.name] = _Tensor(list(init.dims), init.data_type)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].HasField("t"):
            value = node.attribute[0].t
            tensors[node.output[0]] = _Tensor(list(value.dims), value.data_type)
    graph = model.graph
    for info in [*graph.input, *graph.value_info, *graph.output]:
        if info.name in tensors or not info.type.HasField("tensor_type"):
            continue
        tensor_type = info.type.tensor_type
        dims = tensor_type.shape.dim
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in dims]
        if any(d < 0 for d in shape):
            unresolved += 1
            shape = [fallback_dim if d < 0 else d for d in shape]
        tensors[info.name] = _Tensor(shape, tensor_type.elem_type)
    return tensors, unresolved


def _attribute(node: onnx.NodeProto, name: str, default: object) -> object:
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def _node_features(
    index: int,
    node: onnx.NodeProto,
    tensors: dict[str, _Tensor],
    float_initializers: set[str],
) -> NodeFeatures:
    inputs = [tensors.get(name) if name else None for name in node.input]
    outputs = [tensors.get(name) for name in node.output if name]
    macs, flops = node_cost(node, inputs, outputs)
    written = sum(t.nbytes for t in outputs if t is not None)
    if node.op_type in SHAPE_ONLY:
        read = 0
    elif node.op_type in GATHERS:
        read = written + sum(t.nbytes for t in inputs[1:] if t is not None)
    else:
        read = sum(t.nbytes for t in inputs if t is not None)
    params = sum(tensors[name].elements for name in set(node.input) if name in float_initializers)
    return NodeFeatures(
        name=node.name or f"{node.op_type}_{index}",
        op_type=node.op_type,
        flops=flops,
        macs=macs,
        bytes=read + written,
        params=params,
    )


def node_cost(
    node: onnx.NodeProto,
    inputs: Sequence[_Tensor | None],
    outputs: Sequence[_Tensor | None],
) -> tuple[float, float]:
    """(macs, flops) of one node from its tensors' shapes; (0, 0) when shapes are missing."""
    op = node.op_type
    out = outputs[0] if outputs else None
    if out is None:
        return 0.0, 0.0
    first = inputs[0] if inputs else None
    if op in RECURRENT_GATES:
        return _recurrent_cost(node, inputs)
    if op in MAC_OPS:
        macs = _macs(node, inputs, out)
        has_bias = len(inputs) > 2 and inputs[2] is not None
        return macs, 2.0 * macs + (out.elements if has_bias else 0)
    if op in ELEMENT_COST:
        return 0.0, ELEMENT_COST[op] * out.elements
    if op in POOL_OPS:
        kernel = _attribute(node, "kernel_shape", [])
        assert isinstance(kernel, list)
        return 0.0, float(out.elements * math.prod(kernel))
    if op in INPUT_REDUCTIONS and first is not None:
        return 0.0, float(first.elements)
    return 0.0, 0.0


def _macs(node: onnx.NodeProto, inputs: Sequence[_Tensor | None], out: _Tensor) -> float:
    op = node.op_type
    a = inputs[0] if inputs else None
    b = inputs[1] if len(inputs) > 1 else None
    if a is None or b is None:
        return 0.0
    if op == "Conv":
        # weight [M, C/group, k...]: each output element needs (C/group) * prod(k) MACs.
        return float(out.elements * math.prod(b.shape[1:]))
    if op == "ConvTranspose":
        # weight [C, M/group, k...]: each input element scatters into (M/group) * prod(k).
        return float(a.elements * math.prod(b.shape[1:]))
    if op == "Gemm":
        trans_a = _attribute(node, "transA", 0)
        k = a.shape[0] if trans_a else a.shape[-1]
        return float(out.elements * k)
    # MatMul: every output element is a dot product over A's last dimension.
    return float(out.elements * a.shape[-1])


def _recurrent_cost(node: onnx.NodeProto, inputs: Sequence[_Tensor | None]) -> tuple[float, float]:
    """LSTM/GRU/RNN: X [seq, batch, in] (layout 1: [batch, seq, in]), W [dirs, gates*H, in]."""
    x = inputs[0] if inputs else None
    r = inputs[2] if len(inputs) > 2 else None
    if x is None or r is None or len(x.shape) != 3 or len(r.shape) != 3:
        return 0.0, 0.0
    steps_and_batch = x.shape[0] * x.shape[1]  # the same product in either layout
    directions, _, hidden = r.shape
    gates = RECURRENT_GATES[node.op_type]
    macs = float(steps_and_batch * directions * gates * hidden * (x.shape[2] + hidden))
    elementwise = steps_and_batch * directions * hidden * RECURRENT_ELEMENT_COST[node.op_type]
    return macs, 2.0 * macs + elementwise


def _edges(nodes: Sequence[onnx.NodeProto]) -> list[tuple[int, int]]:
    producer = {name: i for i, node in enumerate(nodes) for name in node.output if name}
    edges = {
        (producer[name], i)
        for i, node in enumerate(nodes)
        for name in node.input
        if name in producer
    }
    return sorted(edges)


def longest_path(count: int, edges: Sequence[tuple[int, int]]) -> int:
    """Nodes on the longest path of a DAG with `count` nodes (0 for an empty graph)."""
    if count == 0:
        return 0
    successors: list[list[int]] = [[] for _ in range(count)]
    indegree = [0] * count
    for src, dst in edges:
        successors[src].append(dst)
        indegree[dst] += 1
    # Kahn's order: ONNX asks for topologically sorted nodes, but not every exporter obeys.
    depth = [1] * count
    ready = [i for i in range(count) if indegree[i] == 0]
    seen = 0
    while ready:
        node = ready.pop()
        seen += 1
        for nxt in successors[node]:
            depth[nxt] = max(depth[nxt], depth[node] + 1)
            indegree[nxt] -= 1
            if indegree[nxt] == 0:
                ready.append(nxt)
    if seen != count:
        raise ValueError("the graph has a cycle")
    return max(depth)
