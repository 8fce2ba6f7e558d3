"""The language model's one-token step exported to ONNX by our code and run with ONNX Runtime (CPU).

``OnnxStepModule`` is the step as a pure function of its inputs: the token ``(B, K, 1)``, the position
``(1,)``, every layer's cached keys and values ``(B, H, S, D)`` (rows ``< pos`` are the past; rows from
``pos`` on are ignored) and the text K/V and mask; it returns the last position's logits ``(B, K, vocab)``
and every layer's new key/value row ``(B, H, 1, D)``. Attention is written out as the past's scores
plus the new row's score, so the step reads the cache and never copies it. Same weights, same maths as
``MusicGenLM.forward``; the export is checked against torch (``tests/test_fast_decode_onnx.py``).

Batch, cache length and text length are dynamic: one export serves every request shape, and is kept
on disk (``onnx_cache``) keyed by the weights. ``OnnxStep`` runs it over a copy of the model's cache
that grows by attention-span buckets (``generate.attention_span``), so a step reads only the bucket it
is in, as the torch loop does; each new row is written to that copy and to the model's own cache.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stemd.models.musicgen.generate import Generation, attention_span, step
from stemd.models.musicgen.model import MusicGenLM

STEP_FORMAT = 3          # bump when OnnxStepModule or export() change: old cache entries stop matching
MAX_BATCH = 64
MAX_TEXT = 1024


class OnnxStepModule(nn.Module):
    def __init__(self, lm: MusicGenLM):
        super().__init__()
        self.lm = lm

    def forward(self, tokens: Tensor, pos: Tensor, text_mask: Tensor, *kv: Tensor):
        lm, a = self.lm, self.lm.args
        n, h_, d = a.num_layers, a.num_heads, a.head_dim
        past, cross = kv[: 2 * n], kv[2 * n:]
        b, k, _ = tokens.shape
        x = sum(lm.embed_tokens[c](tokens[:, c]) for c in range(k))
        if a.scale_embedding:
            x = x * math.sqrt(a.hidden_size)
        x = x + lm.positions[pos].to(x.dtype)
        s = past[0].shape[2]
        # one query: (b, 1, H*D) is (b, H, 1, D) and (b, H, D, 1) in the same memory, so heads are views,
        # never transposes, and the scores are the cache times the query, (b, H, S, 1): the cache is read
        # in place, not transposed each step
        hidden = (torch.arange(s, device=pos.device) >= pos)[None, None, :, None]     # not yet written
        text_bias = torch.zeros_like(text_mask, dtype=x.dtype).masked_fill(~text_mask, float("-inf"))
        text_bias = text_bias.view(b, 1, -1, 1)                                          # (b, 1, T, 1)
        scale = 1.0 / math.sqrt(d)
        new_kv = []
        for i, layer in enumerate(lm.layers):
            att = layer.self_attn
            h = layer.self_attn_layer_norm(x)
            q = att.q_proj(h).view(b, h_, d, 1) * scale
            kk, vv = att.k_proj(h).view(b, h_, 1, d), att.v_proj(h).view(b, h_, 1, d)
            new_kv += [kk, vv]
            old = torch.matmul(past[2 * i], q).masked_fill(hidden, float("-inf"))         # (b, H, S, 1)
            own = torch.matmul(kk, q)                                                     # (b, H, 1, 1)
            p = torch.softmax(torch.cat([old, own], dim=2), dim=2)
            mixed = torch.matmul(p[:, :, :s].view(b, h_, 1, s), past[2 * i + 1]) + p[:, :, s:] * vv
            x = x + att.out_proj(mixed.view(b, 1, h_ * d))
            ca = layer.encoder_attn
            h = layer.encoder_attn_layer_norm(x)
            q = ca.q_proj(h).view(b, h_, d, 1) * scale
            p = torch.softmax(torch.matmul(cross[2 * i], q) + text_bias, dim=2)           # (b, H, T, 1)
            t = p.shape[2]
            x = x + ca.out_proj(torch.matmul(p.view(b, h_, 1, t), cross[2 * i + 1]).view(b, 1, h_ * d))
            x = x + layer.fc2(F.gelu(layer.fc1(layer.final_layer_norm(x))))
        logits = lm.lm_head(lm.layer_norm(x)).view(b, k, a.vocab_size)
        return (logits, *new_kv)


def layer_names(lm: MusicGenLM) -> list[str]:
    return [f"{kind}{i}" for i in range(lm.args.num_layers) for kind in ("k", "v")]


def export(lm: MusicGenLM, path: Path, batch: int = 2, max_seq: int = 256, max_text: int = 64) -> Path:
    """Write the float32 step to ``path`` (weights in ``path``.data beside it); batch, cache length and
    text length are dynamic (the sizes given only shape the example inputs)."""
    a = lm.args
    tokens = torch.zeros(batch, a.num_codebooks, 1, dtype=torch.long)
    pos = torch.tensor([1])
    text_mask = torch.ones(batch, 1, 1, max_text, dtype=torch.bool)
    past = [torch.zeros(batch, a.num_heads, max_seq, a.head_dim) for _ in range(2 * a.num_layers)]
    cross = [torch.zeros(batch, a.num_heads, max_text, a.head_dim) for _ in range(2 * a.num_layers)]
    names = layer_names(lm)
    rows = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    seq = torch.export.Dim("seq", min=2, max=a.max_positions)
    text = torch.export.Dim("text", min=1, max=MAX_TEXT)
    dynamic = {"tokens": {0: rows}, "pos": None, "text_mask": {0: rows, 3: text},
               "kv": tuple([{0: rows, 2: seq}] * len(past) + [{0: rows, 2: text}] * len(cross))}
    with torch.no_grad():
        torch.onnx.export(OnnxStepModule(lm).eval(), (tokens, pos, text_mask, *past, *cross), str(path),
                          input_names=["tokens", "pos", "text_mask"] + [f"past_{n}" for n in names]
                          + [f"cross_{n}" for n in names],
                          output_names=["logits"] + [f"new_{n}" for n in names], dynamo=True,
                          dynamic_shapes=dynamic, external_data=True, optimize=True, verbose=False)
    return path


def cached_step(lm: MusicGenLM, root: Optional[Path] = None, digest: Optional[str] = None) -> tuple[Path, bool]:
    """The exported step for ``lm``'s weights from the disk cache, exported now if absent or damaged:
    ``(path, exported_now)``. ``digest``: ``onnx_cache.weights_digest(lm, lm.args)`` if already known."""
    from stemd.models.musicgen.fast.onnx_cache import cached_export, runtime_versions, weights_digest

    if lm.layer_norm.weight.dtype != torch.float32:
        raise ValueError("the ONNX step is exported from a float32 model")
    parts = {"format": STEP_FORMAT, "weights": digest or weights_digest(lm, lm.args), "dtype": "float32",
             "shapes": {"batch": [1, MAX_BATCH], "seq": [2, lm.args.max_positions], "text": [1, MAX_TEXT]},
             **runtime_versions()}
    with torch.inference_mode(False):
        return cached_export("lm-step", parts, lambda path: export(lm, path))


class OnnxStep:
    """The step object whose forward pass runs in an ONNX Runtime session (prefill stays in torch;
    guidance, sampling and the delay pattern are ``generate.step``'s own). ``bind`` (after every
    prefill) views the model's KV cache,
    text K/V and text mask as numpy arrays (CPU float32 tensors share their memory); ``logits(tokens,
    pos)`` feeds the session a contiguous copy of the cache's first ``attention_span(pos)`` rows, taken
    again only when the span bucket changes, and writes the step's new row at ``pos`` into both."""

    name = "onnx"

    def __init__(self, path: Path, threads: int = 0):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]
        self.span = None

    #: torch's threads while a step runs (``generate.step_threads``): its few torch ops (the noise draw,
    #: guidance, sampling, the delay pattern) on the calling thread alone, as torch's pool waiting beside
    #: ONNX Runtime's made the step 7-13% slower (bench/RESULTS.md)
    torch_threads = 1

    def __call__(self, gen: Generation, span: int) -> None:
        step(self.forward, *gen.step_inputs(), span)

    def forward(self, tokens: Tensor, pos: Tensor, span: int) -> Tensor:
        """``generate.step``'s forward: logits ``(B, K, 1, vocab)`` (the span is chosen in ``logits``)."""
        return torch.from_numpy(self.logits(tokens.numpy(), int(pos))).unsqueeze(2)

    def bind(self, gen: Generation) -> None:
        self.bind_model(gen.lm)

    def first_logits(self, gen: Generation, tokens: Tensor) -> Tensor:
        """The prefill of a window that starts empty (position 0 only) as one step of the session:
        logits ``(B, K, 1, vocab)``, and row 0 written to the model's cache."""
        self.bind(gen)
        return self.forward(tokens, torch.zeros(1, dtype=torch.long), 0)

    def bind_model(self, lm: MusicGenLM) -> None:
        if lm.layer_norm.weight.device.type != "cpu" or lm.layer_norm.weight.dtype != torch.float32:
            raise ValueError("the ONNX step runs float32 on the CPU")
        self.past = [t.numpy() for layer in lm.layers for t in (layer.self_attn.kv_cache.k, layer.self_attn.kv_cache.v)]
        # the text K/V only up to the last text position any row attends to (the caches are padded to
        # a multiple of 64): every step reads them, so a short prompt costs a short read
        used = int(lm.text_mask.reshape(lm.text_mask.shape[0], -1).any(dim=0).nonzero().max()) + 1
        self.cross = [np.ascontiguousarray(t.numpy()[:, :, :used]) for layer in lm.layers
                      for t in (layer.encoder_attn.cross_kv.k, layer.encoder_attn.cross_kv.v)]
        self.text_mask = np.ascontiguousarray(lm.text_mask.numpy()[..., :used])
        self.max_seq = lm.max_seq
        self.span = None          # the model's cache was just rewritten: copy it again

    def logits(self, tokens: np.ndarray, pos: int) -> np.ndarray:
        """``tokens`` ``(B, K, 1)`` at ``pos`` -> logits ``(B, K, vocab)``; the cache row at ``pos`` is written."""
        span = attention_span(pos, self.max_seq)
        if span != self.span:
            # rows from pos on are masked (but must be finite: zeros, which cost nothing to allocate)
            self.window = []
            for t in self.past:
                window = np.zeros(t.shape[:2] + (span,) + t.shape[3:], dtype=t.dtype)
                window[:, :, :pos] = t[:, :, :pos]
                self.window.append(window)
            self.span = span
        feeds = [tokens.astype(np.int64), np.array([pos], np.int64), self.text_mask, *self.window, *self.cross]
        out = self.session.run(None, dict(zip(self.names, feeds)))
        for cache, window, row in zip(self.past, self.window, out[1:]):
            cache[:, :, pos: pos + 1] = row
            window[:, :, pos: pos + 1] = row
        return out[0]


#: the step with weight-only int8 matrices: ONNX Runtime's MatMulNBits, 8 bits, symmetric, one scale per
#: 128 inputs of a row, computed in int8 (accuracy level 4: VNNI/AMX where the CPU has them)
INT8 = {"bits": 8, "block_size": 128, "is_symmetric": True, "accuracy_level": 4}


def cached_int8_step(lm: MusicGenLM, root: Optional[Path] = None) -> tuple[Path, bool]:
    """The exported step (``cached_step``) with every MatMul's weight quantized to int8 by ONNX Runtime's
    own quantizer, kept in the cache beside it: ``(path, made_now)``. Not exact: see docs/backends.md."""
    import logging

    from stemd.models.musicgen.fast.onnx_cache import cached_export, runtime_versions, weights_digest

    digest = weights_digest(lm, lm.args)
    source, _ = cached_step(lm, root, digest)

    def quantize(path: Path) -> None:
        import onnx
        from onnxruntime.quantization import matmul_nbits_quantizer as nbits

        quantizer_log = logging.getLogger(nbits.__name__)
        level = quantizer_log.level
        quantizer_log.setLevel(logging.WARNING)    # it logs every node at INFO
        try:
            quantizer = nbits.MatMulNBitsQuantizer(onnx.load(str(source)), **INT8)
            quantizer.process()
            quantizer.model.save_model_to_file(str(path), use_external_data_format=True)
        finally:
            quantizer_log.setLevel(level)

    parts = {"format": STEP_FORMAT, "weights": digest, "from": "lm-step", "int8": INT8, **runtime_versions()}
    return cached_export("lm-step-int8", parts, quantize, root=root)
