"""Incremental EnCodec decoding at a constant cost per chunk.

EnCodec 32 kHz is non-causal (symmetric convolutions, reflect padding at the edges) and its decoder
has LSTMs, so a frame's audio depends on frames on both sides. Each chunk of ``chunk`` new frames is
decoded together with ``left`` frames of history and ``right`` frames of lookahead; the audio of the
new frames is kept, and the first ``crossfade`` samples are blended (equal-gain linear fade) with
the previous window's audio for the same samples. Every decode covers at most
``left + chunk + right`` frames, however long the take: the history is never decoded again.

``StreamingDecoder.push(codes)`` takes newly complete frames ``(V, K, n)`` and returns the audio that
is final ``(V, channels, m)`` (possibly empty); ``flush()`` decodes the rest once no more frames come.
``first`` sizes the first piece: the frames its consumer needs before it can do anything (conform's
first tempo estimate, ``conform.stream.first_heard_seconds``), decoded in one window as soon as they
and their right context exist, instead of in chunks whose last one overshoots the need by up to a
chunk of decoding steps. ``ask(frames)`` does the same later on: the consumer needs that many frames'
audio before it can go on (conform, once it has read where bar 1 ends), so the next piece ends
there (at most ``max(chunk, first)`` frames long) instead of on the chunk grid.
``run`` swaps the codec's torch decode for another runner of the same maths (ONNX Runtime); the windows,
context and crossfade are the same whichever runs.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def decode_codes(codec, codes: Tensor, audio_channels: int, run=None) -> Tensor:
    """EnCodec frames ``(V, K, n)`` -> audio ``(V, channels, n * hop)`` (stereo: even codebooks left, odd right).
    ``run``: what turns codes ``(K, B, n)`` into audio ``(B, 1, n * hop)`` instead of the codec's torch
    modules (``fast.onnx_codec.OnnxCodec``)."""
    v = codes.shape[0]
    if audio_channels == 2:
        codes = torch.cat([codes[:, 0::2], codes[:, 1::2]], dim=0)        # (2V, K/2, n)
    with torch.no_grad():
        if run is not None:
            audio = run(codes.transpose(0, 1))
        else:
            audio = codec.decoder(codec.quantizer.decode(codes.transpose(0, 1)))  # (B, 1, n * hop)
    if audio_channels == 2:
        audio = torch.cat([audio[:v], audio[v:]], dim=1)
    return audio


class StreamingDecoder:
    def __init__(self, codec, audio_channels: int, hop: int, *, chunk: int = 25, left: int = 25, right: int = 6,
                 crossfade: int = 640, skip_frames: int = 0, first: int = 0, run=None):
        if crossfade > right * hop:
            raise ValueError("the crossfade must fit inside the right context")
        self.codec, self.channels, self.hop, self.run = codec, audio_channels, hop, run
        self.chunk, self.left, self.right, self.crossfade = chunk, left, right, crossfade
        self.codes: Tensor | None = None      # frames kept: [self.first, self.first + n)
        self.first = 0                        # request frame index of self.codes[..., 0]
        self.done = 0                         # frames whose audio is final (emitted or skipped)
        self.skip = skip_frames               # frames decoded as context only (a continuation prompt)
        self.first_stop = skip_frames + first if first > chunk else 0   # the first piece's end, if sized
        self.asked = 0                        # the end of the audio the consumer asked for (ask)
        self.longest = max(chunk, first)      # the longest piece an ask makes
        self.tail: Tensor | None = None       # the previous window's audio for the next crossfade
        self.fade_in = torch.linspace(0.0, 1.0, crossfade + 2)[1:-1] if crossfade else None

    @property
    def frames(self) -> int:
        return self.first + (0 if self.codes is None else self.codes.shape[-1])

    def push(self, codes: Tensor) -> np.ndarray:
        codes = codes.detach()
        self.codes = codes if self.codes is None else torch.cat([self.codes, codes], dim=-1)
        out = []
        while self.frames >= self._next_stop() + self.right:
            out.append(self._emit(self._next_stop(), final=False))
        return self._join(out)

    def ask(self, frames: int) -> None:
        """The consumer can do nothing more until the audio of ``frames`` frames (after any skipped
        context) is out: the next piece ends there."""
        self.asked = max(self.asked, self.skip + int(frames))

    def _next_stop(self) -> int:
        stop = self.done + self.chunk
        if self.done < self.first_stop:
            return max(stop, self.first_stop)
        if self.done < self.asked:
            return min(self.asked, self.done + self.longest)
        return stop

    def flush(self) -> np.ndarray:
        if self.codes is None or self.frames <= self.done:
            return self._join([])
        return self._join([self._emit(self.frames, final=True)])

    def _emit(self, stop: int, final: bool) -> np.ndarray:
        start = self.done
        lo = max(self.first, start - self.left)
        hi = self.frames if final else stop + self.right
        window = self.codes[..., lo - self.first: hi - self.first]
        audio = decode_codes(self.codec, window, self.channels, self.run).float().cpu()
        a = (start - lo) * self.hop
        b = (stop - lo) * self.hop
        piece = audio[..., a:b].clone()
        if self.tail is not None and self.crossfade:
            n = min(self.crossfade, piece.shape[-1], self.tail.shape[-1])
            fade = self.fade_in[:n]
            piece[..., :n] = self.tail[..., :n] * (1 - fade) + piece[..., :n] * fade
        self.tail = None if final else audio[..., b: b + self.crossfade].clone()
        self.done = stop
        # forget frames that no later window needs
        keep_from = max(self.first, self.done - self.left)
        self.codes = self.codes[..., keep_from - self.first:]
        self.first = keep_from
        # frames before ``skip`` are context (the continuation prompt): decoded, never emitted
        if self.skip > start:
            cut = (min(self.skip, stop) - start) * self.hop
            piece = piece[..., cut:]
        return piece.numpy()

    def _join(self, pieces: list) -> np.ndarray:
        if not pieces:
            v = 0 if self.codes is None else self.codes.shape[0]
            return np.zeros((v, self.channels, 0), dtype=np.float32)
        return np.ascontiguousarray(np.concatenate(pieces, axis=-1), dtype=np.float32)
