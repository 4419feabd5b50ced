"""Small helper for assembling ONNX graphs with deterministic random weights.

Every weight comes from one ``numpy.random.default_rng(seed)`` stream consumed in graph
order, so the same builder code and seed always produce byte-identical models.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper

OPSET = 17
# Opset 17 shipped with IR 8 (ONNX 1.12); pinning it keeps files loadable by older runtimes
# too, and onnxruntime 1.32 accepts it.
IR_VERSION = 8
PRODUCER = "deinfer.zoo"

FloatArray = npt.NDArray[np.float32]
Dim = int | str


class GraphBuilder:
    """Accumulates nodes and initializers; each ``op`` helper returns its output name."""

    def __init__(self, name: str, seed: int) -> None:
        self.name = name
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        # Tensors are written straight into the final ModelProto: make_graph/make_model
        # would copy every initializer again, which costs seconds for vgg16's 550 MB.
        self._model = onnx.ModelProto()
        self._graph = self._model.graph
        self._counts: dict[str, int] = {}
        self._consts: dict[tuple[str, tuple[int, ...], bytes], str] = {}

    # ----------------------------------------------------------------- plumbing
    def fresh(self, prefix: str) -> str:
        """Unique, readable tensor/node name such as ``conv_3``."""
        n = self._counts.get(prefix, 0)
        self._counts[prefix] = n + 1
        return f"{prefix}_{n}"

    def initializer(self, prefix: str, array: npt.NDArray[np.generic]) -> str:
        name = self.fresh(prefix)
        tensor = self._graph.initializer.add()
        tensor.name = name
        tensor.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
        tensor.dims.extend(array.shape)
        # ONNX raw_data is little-endian; the astype is a no-op on little-endian hosts.
        tensor.raw_data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        return name

    def const(
        self, values: float | Sequence[int] | Sequence[float], dtype: type[np.generic]
    ) -> str:
        """Small shared constant (shapes, axes, scalars), deduplicated by value."""
        arr = np.asarray(values, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            self._consts[key] = self.initializer("const", arr)
        return self._consts[key]

    def scalar(self, value: float) -> str:
        """0-d float32 constant, broadcastable against any activation."""
        return self.const(value, np.float32)

    def op(self, op_type: str, inputs: Sequence[str], **attrs: Any) -> str:
        out = self.fresh(op_type.lower())
        self._graph.node.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def add_input(self, name: str, elem_type: int, shape: Sequence[Dim]) -> str:
        self._graph.input.append(helper.make_tensor_value_info(name, elem_type, list(shape)))
        return name

    def add_output(self, tensor: str, name: str, elem_type: int, shape: Sequence[Dim]) -> None:
        """Expose ``tensor`` as a graph output called ``name`` (via Identity if renamed)."""
        if tensor != name:
            self._graph.node.append(helper.make_node("Identity", [tensor], [name], name=name))
        self._graph.output.append(helper.make_tensor_value_info(name, elem_type, list(shape)))

    # ------------------------------------------------------------------ weights
    def normal(self, shape: Sequence[int], std: float) -> FloatArray:
        # float32 draws straight from the generator: no float64 temporaries, which keeps
        # vgg16's ~138M parameters fast to generate.
        arr = self.rng.standard_normal(tuple(shape), dtype=np.float32)
        arr *= np.float32(std)
        return arr

    def uniform(self, shape: Sequence[int], low: float, high: float) -> FloatArray:
        return self.rng.uniform(low, high, tuple(shape)).astype(np.float32)

    # ------------------------------------------------------------------- layers
    def conv(
        self,
        x: str,
        in_c: int,
        out_c: int,
        kernel: int,
        stride: int = 1,
        groups: int = 1,
        bn: bool = True,
        gamma_scale: float = 1.0,
    ) -> str:
        """Conv with "same"-style padding; ``bn`` folds a random BatchNorm into it.

        He-normal init keeps activation variance roughly constant through ReLU stacks.
        ``gamma_scale`` < 1 damps residual branches so deep nets stay well-scaled.
        """
        fan_in = in_c // groups * kernel * kernel
        w = self.normal((out_c, in_c // groups, kernel, kernel), float(np.sqrt(2.0 / fan_in)))
        if bn:
            w, b = fold_batchnorm(w, *self._bn_stats(out_c, gamma_scale))
        else:
            b = self.normal((out_c,), 0.01)
        pad = kernel // 2
        return self.op(
            "Conv",
            [x, self.initializer("conv_w", w), self.initializer("conv_b", b)],
            kernel_shape=[kernel, kernel],
            strides=[stride, stride],
            pads=[pad] * 4,
            group=groups,
        )

    def _bn_stats(
        self, channels: int, gamma_scale: float
    ) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        gamma = self.uniform((channels,), 0.9, 1.1) * np.float32(gamma_scale)
        beta = self.normal((channels,), 0.02)
        mean = self.normal((channels,), 0.02)
        var = self.uniform((channels,), 0.9, 1.1)
        return gamma, beta, mean, var

    def relu(self, x: str) -> str:
        return self.op("Relu", [x])

    def relu6(self, x: str) -> str:
        return self.op("Clip", [x, self.scalar(0.0), self.scalar(6.0)])

    def max_pool(self, x: str, kernel: int, stride: int, pad: int = 0) -> str:
        return self.op(
            "MaxPool", [x], kernel_shape=[kernel, kernel], strides=[stride, stride], pads=[pad] * 4
        )

    def global_avg_pool(self, x: str) -> str:
        return self.op("GlobalAveragePool", [x])

    def flatten(self, x: str) -> str:
        return self.op("Flatten", [x], axis=1)

    def gemm(self, x: str, in_f: int, out_f: int, gain: float = 2.0) -> str:
        """Fully connected layer on [N, in_f]; weight stored [out, in] as in PyTorch."""
        w = self.normal((out_f, in_f), float(np.sqrt(gain / in_f)))
        b = self.normal((out_f,), 0.01)
        return self.op(
            "Gemm", [x, self.initializer("fc_w", w), self.initializer("fc_b", b)], transB=1
        )

    def add(self, a: str, b: str) -> str:
        return self.op("Add", [a, b])

    def linear(self, x: str, in_f: int, out_f: int, gain: float = 1.0) -> str:
        """MatMul + bias for rank>2 activations (Gemm only takes 2-D inputs)."""
        w = self.normal((in_f, out_f), float(np.sqrt(gain / in_f)))
        b = self.normal((out_f,), 0.01)
        return self.add(
            self.op("MatMul", [x, self.initializer("linear_w", w)]), self.initializer("linear_b", b)
        )

    def layer_norm(self, x: str, dim: int) -> str:
        scale = self.uniform((dim,), 0.9, 1.1)
        bias = self.normal((dim,), 0.02)
        return self.op(
            "LayerNormalization",
            [x, self.initializer("ln_scale", scale), self.initializer("ln_bias", bias)],
            axis=-1,
            epsilon=1e-12,
        )

    def gelu(self, x: str) -> str:
        """Exact GELU, 0.5*x*(1+erf(x/sqrt(2))): opset 17 has no Gelu op, and ORT fuses this."""
        erf = self.op("Erf", [self.op("Div", [x, self.scalar(float(np.sqrt(2.0)))])])
        one_plus = self.add(erf, self.scalar(1.0))
        return self.op("Mul", [self.op("Mul", [x, one_plus]), self.scalar(0.5)])

    def softmax(self, x: str, axis: int = -1) -> str:
        return self.op("Softmax", [x], axis=axis)

    # -------------------------------------------------------------------- model
    def to_model(self, doc: str) -> onnx.ModelProto:
        """Finalise and return the model; the builder must not be used afterwards."""
        model = self._model
        model.graph.name = self.name
        model.ir_version = IR_VERSION
        model.opset_import.append(helper.make_opsetid("", OPSET))
        model.producer_name = PRODUCER
        model.producer_version = "1"
        model.doc_string = doc
        helper.set_model_props(model, {"zoo_name": self.name, "seed": str(self.seed)})
        return model


def fold_batchnorm(
    w: FloatArray,
    gamma: FloatArray,
    beta: FloatArray,
    mean: FloatArray,
    var: FloatArray,
    eps: float = 1e-5,
) -> tuple[FloatArray, FloatArray]:
    """Fold inference-mode BatchNorm into the preceding conv's weight and bias.

    BN(conv(x)) = gamma * (conv(x) - mean) / sqrt(var + eps) + beta, which is a conv with
    per-output-channel rescaled weights plus a bias.
    """
    factor = (gamma / np.sqrt(var + np.float32(eps))).astype(np.float32)
    folded_w = w * factor.reshape(-1, *([1] * (w.ndim - 1)))
    folded_b = (beta - mean * factor).astype(np.float32)
    return folded_w.astype(np.float32, copy=False), folded_b


FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64
