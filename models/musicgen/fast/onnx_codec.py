"""EnCodec's decoder (codes -> audio) exported to ONNX by our code and run with ONNX Runtime (CPU).

``CodecDecodeModule`` is transformers' ``EncodecModel`` decode path (residual VQ lookup, then the SEANet
decoder: convolutions with reflect padding, an LSTM, transposed convolutions) over the same modules and
weights, with the padding arithmetic on Python ints so the number of frames can be a dynamic axis:
one export serves every window ``streaming.StreamingDecoder`` decodes. Checked against torch within
1e-4 (``tests/test_fast_decode_onnx.py``). Windows shorter than ``MIN_FRAMES`` (reflect padding needs
more samples than it pads) are decoded by torch.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

CODEC_FORMAT = 1         # bump when CodecDecodeModule or export_codec change
MIN_FRAMES = 8
MAX_FRAMES = 3000
MAX_BATCH = 64


def _conv1d(m, x: Tensor) -> Tensor:
    """transformers' ``EncodecConv1d.forward`` with its padding computed on ints."""
    conv = m.conv
    kernel = (conv.kernel_size[0] - 1) * conv.dilation[0] + 1
    stride = conv.stride[0]
    total = kernel - stride
    length = x.shape[-1]
    frames = -(-(length - kernel + total) // stride)           # ceil((length - kernel + total) / stride)
    extra = frames * stride + kernel - total - length
    if m.causal:
        pads = (total, extra)
    else:
        right = total // 2
        pads = (total - right, right + extra)
    x = F.pad(x, pads, mode=m.pad_mode) if m.pad_mode != "zero" else F.pad(x, pads)
    x = conv(x)
    return m.norm(x) if m.norm_type == "time_group_norm" else x


def _conv_transpose1d(m, x: Tensor) -> Tensor:
    conv = m.conv
    total = conv.kernel_size[0] - conv.stride[0]
    x = conv(x)
    if m.norm_type == "time_group_norm":
        x = m.norm(x)
    right = math.ceil(total * m.trim_right_ratio) if m.causal else total // 2
    return x[..., total - right: x.shape[-1] - right]


def _onnx_gates(w: Tensor) -> Tensor:
    """torch's LSTM gate blocks (input, forget, cell, output) in ONNX's order (input, output, forget, cell)."""
    i, f, g, o = w.detach().chunk(4, dim=0)
    return torch.cat([i, o, f, g], dim=0).clone()


class CodecDecodeModule(nn.Module):
    """Codes ``(K, B, n)`` -> audio ``(B, 1, n * hop)``."""

    def __init__(self, codec):
        super().__init__()
        self.codec = codec
        # each LSTM layer's weights in ONNX's layout, constants of the exported graph
        self.onnx_lstm: dict[int, list[tuple[Tensor, Tensor, Tensor]]] = {}
        for layer in codec.decoder.layers:
            lstm = getattr(layer, "lstm", None)
            if isinstance(lstm, nn.LSTM):
                self.onnx_lstm[id(lstm)] = [
                    (_onnx_gates(getattr(lstm, f"weight_ih_l{k}"))[None],
                     _onnx_gates(getattr(lstm, f"weight_hh_l{k}"))[None],
                     torch.cat([_onnx_gates(getattr(lstm, f"bias_ih_l{k}")),
                                _onnx_gates(getattr(lstm, f"bias_hh_l{k}"))])[None])
                    for k in range(lstm.num_layers)]

    def forward(self, codes: Tensor) -> Tensor:
        layers = self.codec.quantizer.layers
        x = sum(F.embedding(codes[i], layers[i].codebook.embed) for i in range(codes.shape[0]))
        x = x.permute(0, 2, 1)                                          # (B, D, n)
        for layer in self.codec.decoder.layers:
            x = self.layer(layer, x)
        return x

    def layer(self, layer, x: Tensor) -> Tensor:
        from transformers.models.encodec import modeling_encodec as me

        if isinstance(layer, me.EncodecConv1d):
            return _conv1d(layer, x)
        if isinstance(layer, me.EncodecConvTranspose1d):
            return _conv_transpose1d(layer, x)
        if isinstance(layer, me.EncodecResnetBlock):
            h = x
            for sub in layer.block:
                h = self.layer(sub, h)
            short = x if isinstance(layer.shortcut, nn.Identity) else _conv1d(layer.shortcut, x)
            return short + h
        if isinstance(layer, me.EncodecLSTM):
            return self.lstm(layer.lstm, x)
        return layer(x)          # ELU

    def lstm(self, lstm: nn.LSTM, x: Tensor) -> Tensor:
        """``EncodecLSTM``: ``(B, C, T)`` through the stacked LSTM along T, plus the input. In an export each
        layer is one ONNX ``LSTM`` node (the exporter would unroll torch's over a fixed number of frames)."""
        seq = x.permute(2, 0, 1)                                        # (T, B, C)
        if not torch.onnx.is_in_onnx_export():
            return (lstm(seq)[0] + seq).permute(1, 2, 0)
        h = seq
        for w, r, b in self.onnx_lstm[id(lstm)]:
            y = torch.onnx.ops.symbolic("LSTM", (h, w, r, b), {"hidden_size": lstm.hidden_size}, dtype=h.dtype,
                                        shape=(h.shape[0], 1, h.shape[1], lstm.hidden_size), version=14)
            h = y[:, 0]                                                 # (T, 1, B, C) -> (T, B, C)
        return (h + seq).permute(1, 2, 0)


def export_codec(codec, codebooks: int, path: Path, batch: int = 2, frames: int = 56) -> Path:
    """Write the float32 decoder for ``codebooks`` codebooks; batch and frames are dynamic."""
    codes = torch.zeros(codebooks, batch, frames, dtype=torch.long)
    rows = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    n = torch.export.Dim("frames", min=MIN_FRAMES, max=MAX_FRAMES)
    with torch.no_grad():
        torch.onnx.export(CodecDecodeModule(codec).eval(), (codes,), str(path), input_names=["codes"],
                          output_names=["audio"], dynamo=True, dynamic_shapes={"codes": {1: rows, 2: n}},
                          external_data=True, optimize=True, verbose=False)
    return path


def cached_codec(codec, codebooks: int, root: Optional[Path] = None) -> tuple[Path, bool]:
    from stemd.models.musicgen.fast.onnx_cache import cached_export, runtime_versions, weights_digest

    parts = {"format": CODEC_FORMAT, "weights": weights_digest(codec, codec.config.to_json_string()),
             "codebooks": codebooks, "shapes": {"batch": [1, MAX_BATCH], "frames": [MIN_FRAMES, MAX_FRAMES]},
             **runtime_versions()}
    with torch.inference_mode(False):
        return cached_export("codec-decoder", parts, lambda path: export_codec(codec, codebooks, path), root=root)


class OnnxCodec:
    """Codes ``(K, B, n)`` -> audio ``(B, 1, n * hop)`` in ONNX Runtime; a drop-in for the torch decode
    that ``streaming.decode_codes`` runs (``run=``). Windows under ``MIN_FRAMES`` frames go to torch."""

    def __init__(self, path: Path, codec, threads: int = 0):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.path, self.codec = Path(path), codec
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def __call__(self, codes: Tensor) -> Tensor:
        if codes.shape[-1] < MIN_FRAMES or codes.shape[1] > MAX_BATCH:
            return torch_decode(self.codec, codes)
        codes = np.ascontiguousarray(codes.cpu().numpy().astype(np.int64))
        return torch.from_numpy(self.session.run(None, {"codes": codes})[0])


def torch_decode(codec, codes: Tensor) -> Tensor:
    """What ``streaming.decode_codes`` runs by default: ``(K, B, n)`` -> ``(B, 1, n * hop)``."""
    with torch.no_grad():
        return codec.decoder(codec.quantizer.decode(codes))


def window_ms(run, codes: Tensor, repeats: int = 3) -> float:
    """Best-of-``repeats`` milliseconds to decode ``codes`` ``(K, B, n)`` with ``run`` (after one warm-up)."""
    run(codes)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(codes)
        best = min(best, time.perf_counter() - t0)
    return 1000 * best
