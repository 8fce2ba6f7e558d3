"""One query's attention as ONNX Runtime's own kernel: ``com.microsoft.DecoderMaskedMultiHeadAttention``.

The ONNX step (``onnx_step.py``) calls two torch custom ops that export to that one node each:

* ``self_attention``: the new row's query, key and value ``(B, 1, H*D)`` against the layer's cache
  ``(B, H, S, D)``. The node writes the new key/value at row ``past_len`` and attends to rows
  ``[0, past_len]`` only, in the buffer it was given (``past_present_share_buffer``): the session
  reads the model's cache in place, never a copy of it, and never the rows past the position.
* ``cross_attention``: the query against the text K/V ``(B, H, T, D)`` with a key-padding mask ``(B, T)``.

In torch each op computes the same maths (scaled dot-product attention), so the module that calls them
is still a torch module with the model's weights; the export maps each op to its node
(``TRANSLATION``). The node has no schema in the ``onnx`` package (ONNX Runtime registers its contrib
ops itself), so ``register_schema`` declares its inputs and outputs to the exporter first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

OP = "DecoderMaskedMultiHeadAttention"
DOMAIN = "com.microsoft"


@torch.library.custom_op("stemd::self_attention", mutates_args=())
def self_attention(q: Tensor, k: Tensor, v: Tensor, past_k: Tensor, past_v: Tensor, past_len: Tensor,
                   heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """The attention output ``(B, 1, H*D)`` and the caches with row ``past_len`` written (new tensors:
    ONNX Runtime writes that row into the buffer it reads)."""
    b, _, width = q.shape
    d, n = width // heads, int(past_len)
    present_k, present_v = past_k.clone(), past_v.clone()
    present_k[:, :, n] = k.view(b, heads, d)
    present_v[:, :, n] = v.view(b, heads, d)
    out = F.scaled_dot_product_attention(q.view(b, heads, 1, d), present_k[:, :, :n + 1], present_v[:, :, :n + 1])
    return out.reshape(b, 1, width), present_k, present_v


@self_attention.register_fake
def _(q, k, v, past_k, past_v, past_len, heads):
    return torch.empty_like(q), torch.empty_like(past_k), torch.empty_like(past_v)


@torch.library.custom_op("stemd::cross_attention", mutates_args=())
def cross_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, heads: int) -> Tensor:
    """``q`` ``(B, 1, H*D)`` against the text K/V ``(B, H, T, D)``; ``mask`` ``(B, T)`` int32, 1 = attend."""
    b, _, width = q.shape
    out = F.scaled_dot_product_attention(q.view(b, heads, 1, width // heads), k, v,
                                         attn_mask=mask.bool()[:, None, None, :])
    return out.reshape(b, 1, width)


@cross_attention.register_fake
def _(q, k, v, mask, heads):
    return torch.empty_like(q)


def register_schema() -> None:
    """Declare the node's signature to ``onnx`` (once per process) so that the exporter can build it."""
    import onnx
    from onnx.defs import OpSchema

    try:
        onnx.defs.get_schema(OP, 1, DOMAIN)
        return
    except onnx.defs.SchemaError:
        pass
    param, optional = OpSchema.FormalParameter, OpSchema.FormalParameterOption.Optional
    inputs = [param("query", "T")] + [
        param(name, kind, param_option=optional) for name, kind in
        [("key", "T"), ("value", "T"), ("mask_index", "M"), ("attention_bias", "T"), ("past_key", "T"),
         ("past_value", "T"), ("past_sequence_length", "M"), ("beam_width", "M"), ("cache_indirection", "M"),
         ("bias", "T")]]
    outputs = [param("output", "T"), param("present_key", "T", param_option=optional),
               param("present_value", "T", param_option=optional)]
    attr, make = OpSchema.Attribute, onnx.helper.make_attribute
    attributes = [attr("num_heads", OpSchema.AttrType.INT, "heads"),
                  attr("past_present_share_buffer", make("past_present_share_buffer", 0), "in-place cache"),
                  attr("scale", make("scale", 0.0), "0: 1/sqrt(head size)")]
    onnx.defs.register_schema(OpSchema(OP, DOMAIN, 1, "ONNX Runtime's one-query attention (contrib op)",
                                       inputs=inputs, outputs=outputs, attributes=attributes,
                                       type_constraints=[("T", ["tensor(float)"], ""), ("M", ["tensor(int32)"], "")]))


def translation() -> dict:
    """The exporter's ``custom_translation_table``: each op to its node (``register_schema`` first)."""
    from onnxscript import values

    msft = values.Opset(DOMAIN, 1)

    def self_node(q, k, v, past_k, past_v, past_len, heads: int):
        return getattr(msft, OP)(q, k, v, None, None, past_k, past_v, past_len, num_heads=heads,
                                 past_present_share_buffer=1, scale=0.0)

    def cross_node(q, k, v, mask, heads: int):
        return getattr(msft, OP)(q, k, v, mask, num_heads=heads, scale=0.0)[0]

    return {torch.ops.stemd.self_attention.default: self_node, torch.ops.stemd.cross_attention.default: cross_node}


def drop_cross_caches(path) -> None:
    """The exporter gives every node of the op all three outputs; a cross-attention node with cache outputs
    would ask ONNX Runtime for a cache it does not have. Drop them (the graph file only; weights untouched)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for node in model.graph.node:
        if node.op_type == OP and node.domain == DOMAIN and len(node.input) <= 4:
            del node.output[1:]
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
