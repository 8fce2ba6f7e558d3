"""The language model's one-token step exported to ONNX by our code and run with ONNX Runtime (CPU).

``OnnxStepModule`` is the step as a pure function of its inputs: the token ``(B, K, 1)``, the position
``(1,)``, every layer's cached keys and values ``(B, H, S, D)`` and the text K/V and mask; it returns the
last position's logits ``(B, K, vocab)`` and every layer's new key/value row ``(B, H, 1, D)``, which
``OnnxStep`` writes into its numpy cache. Same weights, same maths as ``MusicGenLM.forward``; the
export is checked against torch (``max_abs_diff``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stemd.models.musicgen.generate import Generation, Sampling, force, logits_to_tokens
from stemd.models.musicgen.model import MusicGenLM


class OnnxStepModule(nn.Module):
    def __init__(self, lm: MusicGenLM):
        super().__init__()
        self.lm = lm

    def forward(self, tokens: Tensor, pos: Tensor, text_mask: Tensor, *kv: Tensor):
        lm, a = self.lm, self.lm.args
        n = a.num_layers
        past, cross = kv[: 2 * n], kv[2 * n:]
        b, k, _ = tokens.shape
        x = sum(lm.embed_tokens[c](tokens[:, c]) for c in range(k))
        if a.scale_embedding:
            x = x * math.sqrt(a.hidden_size)
        x = x + lm.positions[pos].to(x.dtype)
        s = past[0].shape[2]
        mask = (torch.arange(s, device=pos.device) <= pos)[None, None, None, :]
        new_kv = []
        for i, layer in enumerate(lm.layers):
            att = layer.self_attn
            h = layer.self_attn_layer_norm(x)
            q, kk, vv = att.heads(att.q_proj(h)), att.heads(att.k_proj(h)), att.heads(att.v_proj(h))
            keys = past[2 * i].index_copy(2, pos, kk)
            values = past[2 * i + 1].index_copy(2, pos, vv)
            new_kv += [kk, vv]
            x = x + att.merge(F.scaled_dot_product_attention(q, keys, values, attn_mask=mask))
            ca = layer.encoder_attn
            h = layer.encoder_attn_layer_norm(x)
            out = F.scaled_dot_product_attention(ca.heads(ca.q_proj(h)), cross[2 * i], cross[2 * i + 1],
                                                 attn_mask=text_mask)
            x = x + ca.merge(out)
            x = x + layer.fc2(F.gelu(layer.fc1(layer.final_layer_norm(x))))
        logits = lm.lm_head(lm.layer_norm(x)).view(b, k, a.vocab_size)
        return (logits, *new_kv)


def export(lm: MusicGenLM, batch: int, max_seq: int, max_text: int, path: Path) -> Path:
    """Write the step for ``batch`` rows, a ``max_seq`` cache and ``max_text`` text tokens (float32)."""
    a = lm.args
    tokens = torch.zeros(batch, a.num_codebooks, 1, dtype=torch.long)
    pos = torch.tensor([1])
    text_mask = torch.ones(batch, 1, 1, max_text, dtype=torch.bool)
    past = [torch.zeros(batch, a.num_heads, max_seq, a.head_dim) for _ in range(2 * a.num_layers)]
    cross = [torch.zeros(batch, a.num_heads, max_text, a.head_dim) for _ in range(2 * a.num_layers)]
    names = [f"{kind}{i}" for i in range(a.num_layers) for kind in ("k", "v")]
    with torch.no_grad():
        torch.onnx.export(OnnxStepModule(lm).eval(), (tokens, pos, text_mask, *past, *cross), str(path),
                          input_names=["tokens", "pos", "text_mask"] + [f"past_{n}" for n in names]
                          + [f"cross_{n}" for n in names],
                          output_names=["logits"] + [f"new_{n}" for n in names], dynamo=True,
                          external_data=False, optimize=True)
    return path


class OnnxStep:
    """An ONNX Runtime session over the model's own caches: ``bind(lm)`` views its KV cache, text K/V
    and text mask as numpy arrays (CPU float32 tensors share their memory), so torch's prefill and
    ``set_conditioning`` feed the session and each ``logits(tokens, pos)`` stores its keys and values
    at ``pos`` where torch would have."""

    def __init__(self, path: Path, threads: int = 0):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]

    def bind(self, lm: MusicGenLM) -> None:
        if lm.layer_norm.weight.device.type != "cpu" or lm.layer_norm.weight.dtype != torch.float32:
            raise ValueError("the ONNX step runs float32 on the CPU")
        self.past = [t.numpy() for layer in lm.layers for t in (layer.self_attn.kv_cache.k, layer.self_attn.kv_cache.v)]
        self.cross = [t.numpy() for layer in lm.layers
                      for t in (layer.encoder_attn.cross_kv.k, layer.encoder_attn.cross_kv.v)]
        self.text_mask = lm.text_mask.numpy()

    def logits(self, tokens: np.ndarray, pos: int) -> np.ndarray:
        """``tokens`` ``(B, K, 1)`` at ``pos`` -> logits ``(B, K, vocab)``; the cache row at ``pos`` is written."""
        feeds = [tokens.astype(np.int64), np.array([pos], np.int64), self.text_mask, *self.past, *self.cross]
        out = self.session.run(None, dict(zip(self.names, feeds)))
        for cache, row in zip(self.past, out[1:]):
            cache[:, :, pos: pos + 1] = row
        return out[0]


class OnnxGeneration(Generation):
    """``Generation`` whose per-token forward pass runs in ONNX Runtime (prefill stays in torch);
    guidance, sampling and the delay pattern are the eager loop's own functions."""

    def __init__(self, lm: MusicGenLM, variations: int, params: Sampling, max_seq: int, step: OnnxStep, **kw):
        self.onnx = step
        super().__init__(lm, variations, params, max_seq, **kw)

    def _start(self, prompt: Tensor) -> None:
        super()._start(prompt)
        self.onnx.bind(self.lm)

    def decode_n_tokens(self, n: int) -> None:
        for _ in range(n):
            if self.pos + 1 >= self.max_seq:
                self._slide()
            cur = self._batched(self.tokens[:, :, self.pos: self.pos + 1])
            logits = torch.from_numpy(self.onnx.logits(cur.numpy(), self.pos))[:, :, None]
            nxt = logits_to_tokens(logits, self.params, self.temperature, self.top_p, self.generator)
            self.tokens[:, :, self.pos + 1] = force(nxt, self.pattern[:, :, self.pos + 1])
            self.pos += 1
