"""BERT-style post-LayerNorm transformer encoders with dynamic batch and sequence length."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx

from deinfer.zoo.builder import FLOAT, INT64, GraphBuilder

# Added to masked-out attention scores; the classic BERT value, which ORT's attention
# fusion recognises and which is large enough to zero those softmax weights in float32.
MASK_NEG = -10000.0


@dataclass(frozen=True)
class BertConfig:
    vocab: int
    hidden: int
    layers: int
    heads: int
    intermediate: int
    max_positions: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


# BERT-base depth/width shrunk (hidden 256, 4 layers) to keep the file ~45 MB, with the
# real 30522-token WordPiece vocabulary so real tokenizer ids are valid inputs.
BERT_CONFIG = BertConfig(
    vocab=30522, hidden=256, layers=4, heads=4, intermediate=1024, max_positions=512
)
TINY_BERT_CONFIG = BertConfig(
    vocab=512, hidden=32, layers=2, heads=2, intermediate=64, max_positions=128
)


def _embeddings(g: GraphBuilder, cfg: BertConfig) -> str:
    """word[input_ids] + position[0..seq) + segment-0 embedding, then LayerNorm."""
    word_table = g.initializer("word_embeddings", g.normal((cfg.vocab, cfg.hidden), 0.02))
    pos_table = g.initializer(
        "position_embeddings", g.normal((cfg.max_positions, cfg.hidden), 0.02)
    )
    # Only segment 0 is served, so the token-type table collapses to one vector.
    segment = g.initializer("token_type_embedding", g.normal((cfg.hidden,), 0.02))
    seq_len = g.op("Gather", [g.op("Shape", ["input_ids"]), g.const(1, np.int64)], axis=0)
    positions = g.op("Range", [g.const(0, np.int64), seq_len, g.const(1, np.int64)])
    words = g.op("Gather", [word_table, "input_ids"], axis=0)
    pos = g.op("Gather", [pos_table, positions], axis=0)
    return g.layer_norm(g.add(g.add(words, pos), segment), cfg.hidden)


def _mask_bias(g: GraphBuilder) -> str:
    """[batch, seq] 0/1 mask -> additive [batch, 1, 1, seq] bias (0 keep, MASK_NEG drop)."""
    keep = g.op("Cast", ["attention_mask"], to=FLOAT)
    drop = g.op("Sub", [g.scalar(1.0), keep])
    bias = g.op("Mul", [drop, g.scalar(MASK_NEG)])
    return g.op("Unsqueeze", [bias, g.const([1, 2], np.int64)])


def _split_heads(g: GraphBuilder, x: str, cfg: BertConfig, perm: list[int]) -> str:
    """[B, S, H] -> [B, heads, S, dh] (or [B, heads, dh, S] for keys, via ``perm``)."""
    shaped = g.op("Reshape", [x, g.const([0, 0, cfg.heads, cfg.head_dim], np.int64)])
    return g.op("Transpose", [shaped], perm=perm)


def _self_attention(g: GraphBuilder, x: str, mask_bias: str, cfg: BertConfig) -> str:
    q = _split_heads(g, g.linear(x, cfg.hidden, cfg.hidden), cfg, [0, 2, 1, 3])
    k = _split_heads(g, g.linear(x, cfg.hidden, cfg.hidden), cfg, [0, 2, 3, 1])
    v = _split_heads(g, g.linear(x, cfg.hidden, cfg.hidden), cfg, [0, 2, 1, 3])
    scores = g.op("Div", [g.op("MatMul", [q, k]), g.scalar(math.sqrt(cfg.head_dim))])
    probs = g.softmax(g.add(scores, mask_bias), axis=-1)
    context = g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
    merged = g.op("Reshape", [context, g.const([0, 0, cfg.hidden], np.int64)])
    return g.linear(merged, cfg.hidden, cfg.hidden)


def _encoder_layer(g: GraphBuilder, x: str, mask_bias: str, cfg: BertConfig) -> str:
    x = g.layer_norm(g.add(_self_attention(g, x, mask_bias, cfg), x), cfg.hidden)
    ffn = g.gelu(g.linear(x, cfg.hidden, cfg.intermediate, gain=2.0))
    ffn = g.linear(ffn, cfg.intermediate, cfg.hidden)
    return g.layer_norm(g.add(ffn, x), cfg.hidden)


def _pooler(g: GraphBuilder, x: str, cfg: BertConfig) -> str:
    """tanh(W * h[CLS] + b), as BERT's pooler over the first token."""
    first = g.op("Gather", [x, g.const(0, np.int64)], axis=1)
    return g.op("Tanh", [g.gemm(first, cfg.hidden, cfg.hidden, gain=1.0)])


def build_bert(name: str, cfg: BertConfig, seed: int) -> onnx.ModelProto:
    g = GraphBuilder(name, seed)
    for tensor in ("input_ids", "attention_mask"):
        g.add_input(tensor, INT64, ("batch", "seq"))
    x = _embeddings(g, cfg)
    mask_bias = _mask_bias(g)
    for _ in range(cfg.layers):
        x = _encoder_layer(g, x, mask_bias, cfg)
    g.add_output(x, "last_hidden_state", FLOAT, ("batch", "seq", cfg.hidden))
    g.add_output(_pooler(g, x, cfg), "pooled", FLOAT, ("batch", cfg.hidden))
    doc = (
        f"{name}: BERT encoder, vocab {cfg.vocab}, hidden {cfg.hidden}, {cfg.layers} layers, "
        f"{cfg.heads} heads, FFN {cfg.intermediate}, max {cfg.max_positions} positions"
    )
    return g.to_model(doc)


def bert(seed: int = 0) -> onnx.ModelProto:
    return build_bert("bert", BERT_CONFIG, seed)


def tiny_bert(seed: int = 0) -> onnx.ModelProto:
    return build_bert("tiny_bert", TINY_BERT_CONFIG, seed)
