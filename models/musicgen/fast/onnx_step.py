"""The language model's one-token step exported to ONNX by our code and run with ONNX Runtime (CPU).

``OnnxStepModule`` is the step as a function of its inputs: the token ``(B, K, 1)``, the position
``(1,)``, every layer's cache of keys and values ``(B, H, S, D)`` (rows ``< pos`` are the past; rows
from ``pos`` on are not read) and the text K/V with its key-padding mask ``(B, T)``; it returns the last
position's logits ``(B, K, vocab)`` and every layer's cache with the new row written at ``pos``. Each
attention is one ONNX Runtime node (``onnx_attention``): the self-attention writes the new row into the
cache it was given and reads rows ``[0, pos]`` of it, so ``OnnxStep`` binds the model's own cache as
both that input and that output, and a step neither copies the cache nor reads past the position.
Same weights, same maths as ``MusicGenLM.forward``; the export is checked against torch
(``tests/test_fast_decode_onnx.py``).

Batch, cache length and text length are dynamic: one export serves every request shape, and is kept
on disk (``onnx_cache``) keyed by the weights.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stemd.models.musicgen.fast import onnx_attention
from stemd.models.musicgen.generate import Generation, step
from stemd.models.musicgen.model import MusicGenLM

STEP_FORMAT = 4          # bump when OnnxStepModule or export() change: old cache entries stop matching
MAX_BATCH = 64
MAX_TEXT = 1024


class OnnxStepModule(nn.Module):
    def __init__(self, lm: MusicGenLM):
        super().__init__()
        self.lm = lm

    def forward(self, tokens: Tensor, pos: Tensor, text_mask: Tensor, *kv: Tensor):
        lm, a = self.lm, self.lm.args
        n, heads = a.num_layers, a.num_heads
        past, cross = kv[: 2 * n], kv[2 * n:]
        b, k, _ = tokens.shape
        x = sum(lm.embed_tokens[c](tokens[:, c]) for c in range(k))
        if a.scale_embedding:
            x = x * math.sqrt(a.hidden_size)
        x = x + lm.positions[pos].to(x.dtype)
        past_len = pos.to(torch.int32).reshape(())
        present = []
        for i, layer in enumerate(lm.layers):
            att = layer.self_attn
            h = layer.self_attn_layer_norm(x)
            mixed, keys, values = onnx_attention.self_attention(att.q_proj(h), att.k_proj(h), att.v_proj(h),
                                                                past[2 * i], past[2 * i + 1], past_len, heads)
            present += [keys, values]
            x = x + att.out_proj(mixed)
            ca = layer.encoder_attn
            h = layer.encoder_attn_layer_norm(x)
            x = x + ca.out_proj(onnx_attention.cross_attention(ca.q_proj(h), cross[2 * i], cross[2 * i + 1],
                                                               text_mask, heads))
            x = x + layer.fc2(F.gelu(layer.fc1(layer.final_layer_norm(x))))
        logits = lm.lm_head(lm.layer_norm(x)).view(b, k, a.vocab_size)
        return (logits, *present)


def layer_names(lm: MusicGenLM) -> list[str]:
    return [f"{kind}{i}" for i in range(lm.args.num_layers) for kind in ("k", "v")]


def export(lm: MusicGenLM, path: Path, batch: int = 2, max_seq: int = 256, max_text: int = 64) -> Path:
    """Write the float32 step to ``path`` (weights in ``path``.data beside it); batch, cache length and
    text length are dynamic (the sizes given only shape the example inputs)."""
    a = lm.args
    tokens = torch.zeros(batch, a.num_codebooks, 1, dtype=torch.long)
    pos = torch.tensor([1])
    text_mask = torch.ones(batch, max_text, dtype=torch.int32)
    past = [torch.zeros(batch, a.num_heads, max_seq, a.head_dim) for _ in range(2 * a.num_layers)]
    cross = [torch.zeros(batch, a.num_heads, max_text, a.head_dim) for _ in range(2 * a.num_layers)]
    names = layer_names(lm)
    rows = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    seq = torch.export.Dim("seq", min=2, max=a.max_positions)
    text = torch.export.Dim("text", min=1, max=MAX_TEXT)
    dynamic = {"tokens": {0: rows}, "pos": None, "text_mask": {0: rows, 1: text},
               "kv": tuple([{0: rows, 2: seq}] * len(past) + [{0: rows, 2: text}] * len(cross))}
    onnx_attention.register_schema()
    with torch.no_grad():
        torch.onnx.export(OnnxStepModule(lm).eval(), (tokens, pos, text_mask, *past, *cross), str(path),
                          input_names=["tokens", "pos", "text_mask"] + [f"past_{n}" for n in names]
                          + [f"cross_{n}" for n in names],
                          output_names=["logits"] + [f"present_{n}" for n in names], dynamo=True,
                          dynamic_shapes=dynamic, external_data=True, optimize=True, verbose=False,
                          custom_translation_table=onnx_attention.translation())
    onnx_attention.drop_cross_caches(path)
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
    """The step object whose forward pass runs in an ONNX Runtime session (guidance, sampling and the
    delay pattern are ``generate.step``'s own). ``bind`` (after every prefill) binds the session once to
    the model's memory: each layer's KV cache as both the cache it reads and the cache it writes (the
    new row lands in the model's own cache), the text K/V and mask as far as the prompt's tokens, and
    fixed buffers for the token, the position and the logits; ``logits(tokens, pos)`` fills the token and
    position buffers and runs it."""

    name = "onnx"

    def __init__(self, path: Path, threads: int = 0):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.binding = None

    #: torch's threads while a step runs (``generate.step_threads``): its few torch ops (the noise draw,
    #: guidance, sampling, the delay pattern) on the calling thread alone, as torch's pool waiting beside
    #: ONNX Runtime's made the step 7-13% slower (bench/RESULTS.md)
    torch_threads = 1

    def __call__(self, gen: Generation, span: int) -> None:
        step(self.forward, *gen.step_inputs(), span)

    def forward(self, tokens: Tensor, pos: Tensor, span: int) -> Tensor:
        """``generate.step``'s forward: logits ``(B, K, 1, vocab)`` (the session reads rows up to ``pos``
        whatever the span)."""
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
        a = lm.args
        self.lm = lm
        self.past = [t.numpy() for layer in lm.layers for t in (layer.self_attn.kv_cache.k, layer.self_attn.kv_cache.v)]
        if not all(t.flags.c_contiguous for t in self.past):
            raise ValueError("the ONNX step reads the model's KV cache in place: it must be contiguous")
        # the text K/V only up to the last text position any row attends to (the caches are padded to
        # a multiple of 64): every step reads them, so a short prompt costs a short read
        rows = lm.text_mask.shape[0]
        keep = lm.text_mask.reshape(rows, -1)
        used = int(keep.any(dim=0).nonzero().max()) + 1
        self.cross = [np.ascontiguousarray(t.numpy()[:, :, :used]) for layer in lm.layers
                      for t in (layer.encoder_attn.cross_kv.k, layer.encoder_attn.cross_kv.v)]
        self.text_mask = np.ascontiguousarray(keep[:, :used].numpy().astype(np.int32))
        self.tokens = np.zeros((rows, a.num_codebooks, 1), dtype=np.int64)
        self.pos = np.zeros(1, dtype=np.int64)
        self.out = np.zeros((rows, a.num_codebooks, a.vocab_size), dtype=np.float32)
        binding = self.session.io_binding()
        inputs = [self.tokens, self.pos, self.text_mask, *self.past, *self.cross]
        for name, array in zip(self.names, inputs):
            binding.bind_input(name, "cpu", 0, array.dtype, array.shape, array.ctypes.data)
        for name, array in zip(self.outputs, [self.out, *self.past]):   # the caches: in place
            binding.bind_output(name, "cpu", 0, array.dtype, array.shape, array.ctypes.data)
        self.binding = binding

    def logits(self, tokens: np.ndarray, pos: int) -> np.ndarray:
        """``tokens`` ``(B, K, 1)`` at ``pos`` -> logits ``(B, K, vocab)``; the cache row at ``pos`` is written."""
        if self.binding is None or self.lm.layers[0].self_attn.kv_cache.k.data_ptr() != self.past[0].ctypes.data:
            raise RuntimeError("the model's caches were set up after the step was bound: bind it again")
        if tokens.shape != self.tokens.shape or not 0 <= pos < self.past[0].shape[2]:
            raise ValueError(f"tokens {tokens.shape} at {pos} do not fit the bound cache "
                             f"{self.tokens.shape[:2]} x {self.past[0].shape[2]} positions")
        self.tokens[...] = tokens
        self.pos[0] = pos
        self.session.run_with_iobinding(self.binding)
        return self.out.copy()


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
