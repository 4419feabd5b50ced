"""DeInfer's two sequence models, sized from its RTX 3080 tables.

`lstm2` ("LSTM-2"): the README gives the input, (batch, 100 steps, 50 features). A 2-layer
LSTM with hidden size 100 and a Linear(100 -> 1) on the last step has 141,701 parameters,
exactly the table's `model_para` (0.135137 Mi x 2^20), and 143,200 thop MACs per step x 100
steps = its `model_gflops` (1.33366 GiMAC for batch 100).

`transformer_encoder6` ("transformer"): the README gives a 6-layer encoder, width 512, 8
heads, FFN 2048 (PyTorch's nn.TransformerEncoderLayer: post-norm, ReLU). The table's
parameter count, 12,610,560, is exactly the FFNs and LayerNorms (thop skips attention); its
MACs per sample (4.697 GiMAC / batch 8) match those FFNs over ~50 tokens, so the graph takes
50 tokens of width 512 (no embedding or output head: the table counts none).
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from deinfer.zoo.architectures.spec import ShapeGraphBuilder
from deinfer.zoo.builder import FLOAT

LSTM_STEPS, LSTM_FEATURES, LSTM_HIDDEN, LSTM_LAYERS = 100, 50, 100, 2
TRANSFORMER_TOKENS, TRANSFORMER_WIDTH, TRANSFORMER_HEADS = 50, 512, 8
TRANSFORMER_FFN, TRANSFORMER_LAYERS = 2048, 6


def build_lstm(name: str, shape: tuple[int, ...], fold: bool) -> onnx.ModelProto:
    """nn.LSTM(batch_first=True) as torch exports it: one ONNX LSTM node per layer."""
    steps, features = shape
    g = ShapeGraphBuilder(name, fold)
    x = g.add_input("input", FLOAT, ["N", steps, features])
    x = g.op("Transpose", [x], perm=[1, 0, 2])  # ONNX LSTM is sequence-major
    width = features
    h = LSTM_HIDDEN
    for _ in range(LSTM_LAYERS):
        # Gates i, o, f, c stacked: W [1, 4H, in], R [1, 4H, H], both biases B [1, 8H].
        w = g.weight("lstm_w", (1, 4 * h, width))
        r = g.weight("lstm_r", (1, 4 * h, h))
        b = g.weight("lstm_b", (1, 8 * h))
        y = g.op("LSTM", [x, w, r, b], hidden_size=h)  # Y: [steps, 1, N, H]
        x = g.op("Squeeze", [y, g.const([1], np.int64)])
        width = h
    last = g.op("Gather", [x, g.const(-1, np.int64)], axis=0)  # [N, H] of the last step
    return g.finish([g.dense(last, h, 1)], f"{name}: DeInfer's LSTM-2 (2 x LSTM-100, Linear)")


def _attention(g: ShapeGraphBuilder, x: str, width: int, heads: int) -> str:
    """Multi-head self-attention as torch exports nn.MultiheadAttention (packed QKV)."""
    head = width // heads
    q, k, v = g.multi_op("Split", [g.dense_nd(x, width, 3 * width)], 3, axis=-1)

    def split_heads(t: str, perm: list[int]) -> str:
        return g.op("Transpose", [g.reshape(t, [0, 0, heads, head])], perm=perm)

    q = g.op("Mul", [split_heads(q, [0, 2, 1, 3]), g.scalar(1.0 / math.sqrt(head))])
    scores = g.op("MatMul", [q, split_heads(k, [0, 2, 3, 1])])  # [N, heads, S, S]
    context = g.op("MatMul", [g.softmax(scores), split_heads(v, [0, 2, 1, 3])])
    context = g.reshape(g.op("Transpose", [context], perm=[0, 2, 1, 3]), [0, 0, width])
    return g.dense_nd(context, width, width)


def build_transformer(name: str, shape: tuple[int, ...], fold: bool) -> onnx.ModelProto:
    tokens, width = shape
    g = ShapeGraphBuilder(name, fold)
    x = g.add_input("input", FLOAT, ["N", tokens, width])
    for _ in range(TRANSFORMER_LAYERS):
        x = g.norm_last(g.add(x, _attention(g, x, width, TRANSFORMER_HEADS)), width, 1e-5)
        ffn = g.relu(g.dense_nd(x, width, TRANSFORMER_FFN))
        x = g.norm_last(g.add(x, g.dense_nd(ffn, TRANSFORMER_FFN, width)), width, 1e-5)
    return g.finish([x], f"{name}: 6-layer post-norm transformer encoder (DeInfer)")
