"""Shape-only ONNX graphs: every weight is declared with its shape, none is materialised.

The architectures here are for static analysis (FLOPs, bytes, the operator graph), not for
execution, and some are huge (regnet_y_128gf: ~645 M parameters). Each weight is an
initializer whose data lives in an external file that is never written: a valid ONNX
declaration that shape inference and `services.common.onnx_graph` read without the data.
Such a model cannot be run or passed to `onnx.checker` as is; `checkable()` turns the weights
into graph inputs so the rest of the graph can be validated.

The node patterns follow what `torch.onnx.export` emits for the torchvision definitions at
opset 17 in eval mode (BatchNorm folded into the preceding conv unless `fold_batchnorm` is
off, Dropout gone, SiLU as Sigmoid+Mul, GELU as Erf, channel-last LayerNorm as
Transpose+LayerNormalization).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, shape_inference

from deinfer.zoo.builder import FLOAT, GraphBuilder

Activation = Literal["relu", "relu6", "silu", "hardswish", "gelu", "none"]
Size2 = int | tuple[int, int]

# Never written: the weights exist only as shapes (see the module docstring).
WEIGHTS_FILE_SUFFIX = ".weights-not-materialised"


def _pair(value: Size2) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else value


class ShapeGraphBuilder(GraphBuilder):
    """GraphBuilder whose weights are shape declarations; adds layer helpers for them."""

    def __init__(self, name: str, fold_batchnorm: bool = True) -> None:
        super().__init__(name, seed=0)
        self.fold_batchnorm = fold_batchnorm
        self._weights_file = name + WEIGHTS_FILE_SUFFIX
        self._offset = 0

    # ------------------------------------------------------------------ weights
    def weight(self, prefix: str, shape: Sequence[int]) -> str:
        """A float32 initializer of `shape` whose data is never materialised."""
        name = self.fresh(prefix)
        tensor = self._graph.initializer.add()
        tensor.name = name
        tensor.data_type = TensorProto.FLOAT
        tensor.dims.extend(int(d) for d in shape)
        tensor.data_location = TensorProto.EXTERNAL
        length = int(np.prod(shape, dtype=np.int64)) * 4
        for key, value in (
            ("location", self._weights_file),
            ("offset", str(self._offset)),
            ("length", str(length)),
        ):
            entry = tensor.external_data.add()
            entry.key = key
            entry.value = value
        self._offset += length
        return name

    def multi_op(
        self, op_type: str, inputs: Sequence[str], outputs: int, **attrs: Any
    ) -> list[str]:
        """A node with several outputs (e.g. Split); returns their names."""
        base = self.fresh(op_type.lower())
        names = [f"{base}_out{i}" for i in range(outputs)]
        self._graph.node.append(helper.make_node(op_type, list(inputs), names, name=base, **attrs))
        return names

    # ------------------------------------------------------------------- layers
    def conv2d(
        self,
        x: str,
        in_c: int,
        out_c: int,
        kernel: Size2,
        stride: Size2 = 1,
        pad: Size2 | None = None,
        groups: int = 1,
        bias: bool = False,
    ) -> str:
        """Plain Conv; `pad` defaults to "same"-style (kernel // 2 on each side)."""
        kh, kw = _pair(kernel)
        ph, pw = _pair(pad) if pad is not None else (kh // 2, kw // 2)
        inputs = [x, self.weight("conv_w", (out_c, in_c // groups, kh, kw))]
        if bias:
            inputs.append(self.weight("conv_b", (out_c,)))
        return self.op(
            "Conv",
            inputs,
            kernel_shape=[kh, kw],
            strides=list(_pair(stride)),
            pads=[ph, pw, ph, pw],
            group=groups,
        )

    def batch_norm(self, x: str, channels: int) -> str:
        """Inference BatchNormalization (scale, bias, mean, var) left as its own node."""
        stats = [self.weight(f"bn_{part}", (channels,)) for part in ("scale", "b", "mean", "var")]
        return self.op("BatchNormalization", [x, *stats])

    def conv_bn(
        self,
        x: str,
        in_c: int,
        out_c: int,
        kernel: Size2,
        stride: Size2 = 1,
        pad: Size2 | None = None,
        groups: int = 1,
        act: Activation = "relu",
    ) -> str:
        """Conv (no bias) + BatchNorm + activation; BN becomes the conv's bias when folded."""
        y = self.conv2d(x, in_c, out_c, kernel, stride, pad, groups, bias=self.fold_batchnorm)
        if not self.fold_batchnorm:
            y = self.batch_norm(y, out_c)
        return self.activation(y, act)

    def activation(self, x: str, act: Activation) -> str:
        if act == "relu":
            return self.relu(x)
        if act == "relu6":
            return self.relu6(x)
        if act == "silu":
            return self.op("Mul", [x, self.op("Sigmoid", [x])])
        if act == "hardswish":
            return self.op("HardSwish", [x])
        if act == "gelu":
            return self.gelu(x)
        return x

    def squeeze_excite(
        self, x: str, channels: int, squeeze: int, act: Activation, gate: str = "Sigmoid"
    ) -> str:
        """Squeeze-and-excitation: pool, 1x1 conv down, act, 1x1 conv up, gate, rescale."""
        s = self.global_avg_pool(x)
        s = self.activation(self.conv2d(s, channels, squeeze, 1, bias=True), act)
        s = self.conv2d(s, squeeze, channels, 1, bias=True)
        if gate == "HardSigmoid":
            # torch's Hardsigmoid is relu6(x + 3) / 6.
            s = self.op("HardSigmoid", [s], alpha=1.0 / 6.0, beta=0.5)
        else:
            s = self.op(gate, [s])
        return self.op("Mul", [x, s])

    def pool(
        self,
        x: str,
        kind: Literal["MaxPool", "AveragePool"],
        kernel: int,
        stride: int,
        pad: int = 0,
        ceil: bool = False,
    ) -> str:
        attrs: dict[str, int | list[int]] = {
            "kernel_shape": [kernel, kernel],
            "strides": [stride, stride],
            "pads": [pad] * 4,
            "ceil_mode": int(ceil),
        }
        if kind == "AveragePool":
            attrs["count_include_pad"] = 1  # torch's avg_pool2d default
        return self.op(kind, [x], **attrs)

    def dense(self, x: str, in_f: int, out_f: int) -> str:
        """nn.Linear on [N, in_f]: Gemm with the weight stored [out, in]."""
        w = self.weight("fc_w", (out_f, in_f))
        return self.op("Gemm", [x, w, self.weight("fc_b", (out_f,))], transB=1)

    def dense_nd(self, x: str, in_f: int, out_f: int) -> str:
        """nn.Linear on rank > 2 activations: MatMul + bias Add."""
        y = self.op("MatMul", [x, self.weight("linear_w", (in_f, out_f))])
        return self.add(y, self.weight("linear_b", (out_f,)))

    def norm_last(self, x: str, dim: int, epsilon: float = 1e-6) -> str:
        """LayerNormalization over the last axis."""
        scale, bias = self.weight("ln_scale", (dim,)), self.weight("ln_bias", (dim,))
        return self.op("LayerNormalization", [x, scale, bias], axis=-1, epsilon=epsilon)

    def norm_channels(self, x: str, channels: int, epsilon: float = 1e-6) -> str:
        """LayerNorm over the channels of NCHW (ConvNeXt's LayerNorm2d): via NHWC."""
        y = self.norm_last(self.op("Transpose", [x], perm=[0, 2, 3, 1]), channels, epsilon)
        return self.op("Transpose", [y], perm=[0, 3, 1, 2])

    def concat(self, xs: Sequence[str], axis: int = 1) -> str:
        return xs[0] if len(xs) == 1 else self.op("Concat", list(xs), axis=axis)

    def reshape(self, x: str, shape: Sequence[int]) -> str:
        return self.op("Reshape", [x, self.const(list(shape), np.int64)])

    # -------------------------------------------------------------------- model
    def image_input(self, channels: int, height: int, width: int) -> str:
        return self.add_input("input", FLOAT, ["N", channels, height, width])

    def finish(self, outputs: Sequence[str], doc: str) -> onnx.ModelProto:
        """Declare `outputs` as graph outputs (types from shape inference); return the model.

        The outputs keep their tensor names: a renaming Identity would add a node that an
        exported model does not have.
        """
        model = self.to_model(doc)
        inferred = shape_inference.infer_shapes(model, strict_mode=True)
        types = {info.name: info.type for info in inferred.graph.value_info}
        for tensor in outputs:
            out = model.graph.output.add()
            out.name = tensor
            out.type.CopyFrom(types[tensor])
        return model


def checkable(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose declared weights are graph inputs, so `onnx.checker` can run on it."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    external = [t for t in copy.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    kept = [t for t in copy.graph.initializer if t.data_location != TensorProto.EXTERNAL]
    del copy.graph.initializer[:]
    copy.graph.initializer.extend(kept)
    copy.graph.input.extend(
        helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in external
    )
    return copy
