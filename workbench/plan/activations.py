"""Activations kept for backward and the generation KV cache: pure element and byte counts from a model's shape."""

from __future__ import annotations

from workbench.plan.shapes import Shape


def layer_activation_elements(shape: Shape, tokens: int, seq: int, eager_attention: bool) -> float:
    """Elements one decoder layer keeps for backward, for `tokens` = rows x seq tokens.

    Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models", sec. 4.1)
    count 34*s*b*h + 5*a*s^2*b bytes per layer for GPT in 16-bit. The same accounting for a decoder
    without dropout, with RMSNorm, grouped-query attention and a gated MLP keeps, per token:
    QKV input h, Q q_dim, K and V 2*kv_dim, attention output q_dim; MLP input h, gate, up, act(gate)
    and act(gate)*up 4*I; two norm inputs 2h. With I=4h, kv=q=h and GELU (h+2I) this is their
    34-bytes-minus-dropout count. Eager attention also keeps the softmax output, a*s^2 per row;
    SDPA / flash attention recompute it.
    """
    q_dim, kv_dim = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    per_token = 4 * shape.hidden + 2 * q_dim + 2 * kv_dim + 4 * shape.intermediate
    elements = tokens * per_token
    if eager_attention:
        elements += (tokens // max(seq, 1)) * shape.heads * seq * seq
    return elements


def activation_bytes(
    shape: Shape,
    rows: int,
    seq: int,
    checkpointing: bool,
    elem_bytes: int = 2,
    logits: bool = True,
    eager_attention: bool = False,
) -> float:
    """Activations of one forward+backward over `rows` sequences of `seq` tokens.

    Without checkpointing every layer keeps `layer_activation_elements`; with it, only each layer's
    input (h per token) is kept and one layer at a time is recomputed. Causal LMs also keep the
    logits (16-bit) and their fp32 copy for the log-softmax of the loss: rows*seq*vocab*(elem+4).
    """
    tokens = rows * seq
    layer = layer_activation_elements(shape, tokens, seq, eager_attention) * elem_bytes
    if checkpointing:
        body = shape.layers * tokens * shape.hidden * elem_bytes + layer
    else:
        body = shape.layers * layer
    head = tokens * shape.vocab * (elem_bytes + 4) if logits else 0
    return body + head


def kv_cache_bytes(shape: Shape, rows: int, seq: int, elem_bytes: int = 2) -> float:
    """Generation cache: keys and values of every layer for `rows` sequences of up to `seq` tokens."""
    return 2 * shape.layers * rows * seq * shape.kv_heads * shape.head_dim * elem_bytes
