"""The MusicGen language model: a decoder over 4 (mono) or 8 (stereo) EnCodec codebooks.

One transformer, a static KV cache preallocated by ``setup_caches`` and text cross-attention keys
and values computed once per request by ``set_conditioning``. Every tensor the per-token step
touches has a fixed shape, so ``generate.decode_one_token`` can be captured as a CUDA graph.

Parameter names follow the Hugging Face checkpoints (``layers.3.self_attn.q_proj.weight``...) so
loading is a prefix strip; only the LM heads are stacked into one matrix (one matmul per step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


@dataclass
class LMArgs:
    hidden_size: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    ffn_dim: int = 4096
    vocab_size: int = 2048          # codebook size; the embedding has one more row: the pad/start token
    num_codebooks: int = 4
    audio_channels: int = 1
    max_positions: int = 2048
    text_hidden_size: int = 768     # the T5 encoder's width (projected when it differs)
    scale_embedding: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def pad_token(self) -> int:
        return self.vocab_size

    @classmethod
    def from_hf(cls, decoder: dict, text_hidden_size: int) -> "LMArgs":
        if decoder.get("activation_function", "gelu") != "gelu":
            raise ValueError(f"unsupported activation {decoder['activation_function']!r}")
        return cls(hidden_size=decoder["hidden_size"], num_layers=decoder["num_hidden_layers"],
                   num_heads=decoder["num_attention_heads"], ffn_dim=decoder["ffn_dim"],
                   vocab_size=decoder["vocab_size"], num_codebooks=decoder["num_codebooks"],
                   audio_channels=decoder.get("audio_channels", 1),
                   max_positions=decoder.get("max_position_embeddings", 2048),
                   text_hidden_size=text_hidden_size,
                   scale_embedding=decoder.get("scale_embedding", False))


def sinusoids(num_positions: int, dim: int) -> Tensor:
    """MusicGen's positional table: [cos | sin] halves (tensor2tensor layout)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000) / (half - 1)))
    angles = torch.arange(num_positions, dtype=torch.float32)[:, None] * freqs[None]
    table = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
    if dim % 2:
        table = torch.cat([table, torch.zeros(num_positions, 1)], dim=1)
    return table


class KVCache(nn.Module):
    """Preallocated keys and values ``(batch, heads, max_seq, head_dim)``, written in place."""

    def __init__(self, batch: int, heads: int, max_seq: int, head_dim: int, dtype, device):
        super().__init__()
        shape = (batch, heads, max_seq, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, input_pos: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        self.k.index_copy_(2, input_pos, k)
        self.v.index_copy_(2, input_pos, v)
        return self.k, self.v


class CrossKV(nn.Module):
    """The text's keys and values for one layer, padded to ``max_text`` tokens; set once per request."""

    def __init__(self, batch: int, heads: int, max_text: int, head_dim: int, dtype, device):
        super().__init__()
        shape = (batch, heads, max_text, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)


class Attention(nn.Module):
    def __init__(self, args: LMArgs):
        super().__init__()
        d = args.hidden_size
        self.n_heads, self.head_dim = args.num_heads, args.head_dim
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.out_proj = nn.Linear(d, d, bias=False)

    def heads(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)

    def merge(self, x: Tensor) -> Tensor:
        b, _, t, _ = x.shape
        return self.out_proj(x.transpose(1, 2).reshape(b, t, -1))


class SelfAttention(Attention):

    def forward(self, x: Tensor, mask: Tensor, input_pos: Tensor) -> Tensor:
        q, k, v = self.heads(self.q_proj(x)), self.heads(self.k_proj(x)), self.heads(self.v_proj(x))
        k, v = self.kv_cache.update(input_pos, k, v)
        span = mask.shape[-1]      # attend over the cache's first ``span`` positions only
        return self.merge(F.scaled_dot_product_attention(q, k[:, :, :span], v[:, :, :span], attn_mask=mask))


class CrossAttention(Attention):

    def project_text(self, text: Tensor) -> tuple[Tensor, Tensor]:
        return self.heads(self.k_proj(text)), self.heads(self.v_proj(text))

    def forward(self, x: Tensor, text_mask: Tensor) -> Tensor:
        q = self.heads(self.q_proj(x))
        out = F.scaled_dot_product_attention(q, self.cross_kv.k, self.cross_kv.v, attn_mask=text_mask)
        return self.merge(out)


class DecoderLayer(nn.Module):
    def __init__(self, args: LMArgs):
        super().__init__()
        d = args.hidden_size
        self.self_attn = SelfAttention(args)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.encoder_attn = CrossAttention(args)
        self.encoder_attn_layer_norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, args.ffn_dim, bias=False)
        self.fc2 = nn.Linear(args.ffn_dim, d, bias=False)
        self.final_layer_norm = nn.LayerNorm(d)

    def forward(self, x: Tensor, mask: Tensor, text_mask: Tensor, input_pos: Tensor) -> Tensor:
        x = x + self.self_attn(self.self_attn_layer_norm(x), mask, input_pos)
        x = x + self.encoder_attn(self.encoder_attn_layer_norm(x), text_mask)
        return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))


class MusicGenLM(nn.Module):
    """Tokens ``(batch, codebooks, t)`` at positions ``input_pos`` -> logits ``(batch, codebooks, t, vocab)``.

    ``prefix_len``: positions before the tokens' own (0 here; a melody model's conditioning, ``melody.py``):
    token position ``p`` sits at cache and embedding position ``prefix_len + p``."""

    layer_class = DecoderLayer
    prefix_len = 0

    def __init__(self, args: LMArgs):
        super().__init__()
        self.args = args
        d, k = args.hidden_size, args.num_codebooks
        self.embed_tokens = nn.ModuleList([nn.Embedding(args.vocab_size + 1, d) for _ in range(k)])
        self.layers = nn.ModuleList([self.layer_class(args) for _ in range(args.num_layers)])
        self.layer_norm = nn.LayerNorm(d)
        # the K heads stacked: row c * vocab + i is codebook c's logit for code i
        self.lm_head = nn.Linear(d, k * args.vocab_size, bias=False)
        self.enc_to_dec_proj = nn.Linear(args.text_hidden_size, d) if args.text_hidden_size != d else None
        self.register_buffer("positions", sinusoids(args.max_positions, d), persistent=False)
        self.max_batch = self.max_seq = self.max_text = -1

    # -- state, set up once and then per request -------------------------------------------------

    def setup_caches(self, max_batch: int, max_seq: int, max_text: int) -> None:
        """Allocate the KV cache and the text K/V buffers; a no-op when the shapes already fit."""
        if (max_batch, max_seq, max_text) == (self.max_batch, self.max_seq, self.max_text):
            return
        if max_seq > self.args.max_positions:
            raise ValueError(f"max_seq {max_seq} exceeds the model's {self.args.max_positions} positions")
        a = self.args
        dtype, device = self.layer_norm.weight.dtype, self.layer_norm.weight.device
        self.clear_caches()    # first: an allocation that fails halfway leaves no shape recorded
        for layer in self.layers:
            layer.self_attn.kv_cache = KVCache(max_batch, a.num_heads, max_seq, a.head_dim, dtype, device)
            layer.encoder_attn.cross_kv = CrossKV(max_batch, a.num_heads, max_text, a.head_dim, dtype, device)
        self.register_buffer("causal_mask", torch.ones(max_seq, max_seq, dtype=torch.bool, device=device).tril(),
                             persistent=False)
        self.register_buffer("text_mask", torch.ones(max_batch, 1, 1, max_text, dtype=torch.bool, device=device),
                             persistent=False)
        self.max_batch, self.max_seq, self.max_text = max_batch, max_seq, max_text

    def clear_caches(self) -> None:
        """Free the KV cache and text K/V; the next ``setup_caches`` allocates them again."""
        for layer in self.layers:
            layer.self_attn._modules.pop("kv_cache", None)
            if hasattr(layer, "encoder_attn"):          # a melody layer has none (melody.py)
                layer.encoder_attn._modules.pop("cross_kv", None)
        for name in ("causal_mask", "text_mask"):
            self._buffers.pop(name, None)
        self.max_batch = self.max_seq = self.max_text = -1

    @torch.no_grad()
    def set_conditioning(self, text: Tensor, text_mask: Tensor) -> None:
        """Compute every layer's cross-attention K/V once for this request.

        ``text`` is the T5 output ``(batch, t, text_hidden)``, ``text_mask`` ``(batch, t)`` with 1 for
        real tokens (an all-zero row is the unconditional half of classifier-free guidance).
        """
        b, t, _ = text.shape
        if b != self.max_batch or t > self.max_text:
            raise ValueError(f"conditioning {tuple(text.shape)} does not fit caches set up for "
                             f"batch {self.max_batch}, {self.max_text} text tokens")
        text = text.to(self.layer_norm.weight.dtype)
        if self.enc_to_dec_proj is not None:
            text = self.enc_to_dec_proj(text)
        text = text * text_mask[..., None].to(text.dtype)
        keep = torch.zeros(b, self.max_text, dtype=torch.bool, device=text.device)
        keep[:, :t] = text_mask.bool()
        # a row with nothing to attend to attends to one zero key/value: the output is zero, as in
        # the reference's uniform attention over zeros, without a NaN from an all-masked softmax
        keep[:, 0] |= ~keep.any(dim=1)
        self.text_mask.copy_(keep[:, None, None, :])
        for layer in self.layers:
            k, v = layer.encoder_attn.project_text(text)
            layer.encoder_attn.cross_kv.k.zero_()
            layer.encoder_attn.cross_kv.v.zero_()
            layer.encoder_attn.cross_kv.k[:, :, :t].copy_(k)
            layer.encoder_attn.cross_kv.v[:, :, :t].copy_(v)

    # -- the forward pass ---------------------------------------------------------------------------

    def forward(self, tokens: Tensor, input_pos: Tensor, span: Optional[int] = None) -> Tensor:
        """``span``: how many cache positions attention reads (>= the last input position + 1; default
        all). Decoding passes it rounded up to a multiple of 128, so the step has a handful of shapes
        and early steps do not read a cache that is mostly empty."""
        b, k, t = tokens.shape
        x = sum(self.embed_tokens[c](tokens[:, c]) for c in range(k))
        if self.args.scale_embedding:
            x = x * math.sqrt(self.args.hidden_size)
        at = input_pos + self.prefix_len if self.prefix_len else input_pos
        x = x + self.positions[at].to(x.dtype)
        mask = self.causal_mask[None, None, at, :span if span is None else span + self.prefix_len]
        for layer in self.layers:
            x = layer(x, mask, self.text_mask, at)
        logits = self.lm_head(self.layer_norm(x))                      # (b, t, k * vocab)
        return logits.view(b, t, k, self.args.vocab_size).transpose(1, 2)
