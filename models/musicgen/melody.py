"""MusicGen melody checkpoints (facebook/musicgen-melody, -melody-large, -stereo-melody): a melody's chroma.

A melody model's decoder has no cross-attention. Its conditioning is a prefix of the decoder's own sequence,
as transformers' ``MusicgenMelodyForConditionalGeneration`` and audiocraft's ``prepend`` fuser build it:

* the chroma of the melody (here: a guide rendered at the model's rate, ``models/guide_audio.py``), computed
  as transformers' ``MusicgenMelodyFeatureExtractor`` does (audiocraft's ``ChromaExtractor``): a power STFT
  (n_fft 16384, hop 4096, Hann window, window-normalised), a chroma filter bank, and per frame a one-hot of
  the strongest pitch class; projected by ``audio_enc_to_dec_proj``, repeated to ``chroma_length`` frames
  (235: 30 s at 32 kHz / 4096) and cut there;
* then T5's states of the text, projected by ``enc_to_dec_proj``.

The prefix goes through the decoder causally at positions ``0 .. C-1``; the tokens follow at ``C + p``
(``MusicGenLM.prefix_len``). Classifier-free guidance's null condition, as transformers builds it: text states
zero, and a chroma whose every frame is pitch class 0. Without a melody both halves get that null chroma. A take
longer than the model's window slides on with the prefix made again from the guide under the new window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from stemd.models.musicgen.engine import MusicGenEngine, describe
from stemd.models.musicgen.model import DecoderLayer, KVCache, LMArgs, MusicGenLM


@dataclass
class MelodyArgs(LMArgs):
    num_chroma: int = 12
    chroma_length: int = 235        # chroma frames in the prefix (repeated or cut to this)


@dataclass(frozen=True)
class ChromaSettings:
    """transformers' MusicgenMelodyFeatureExtractor's settings (its defaults, or preprocessor_config.json's)."""

    sample_rate: int = 32000
    n_fft: int = 16384
    hop: int = 4096
    num_chroma: int = 12
    max_seconds: int = 30           # the extractor's chunk_length: longer audio is cut

    @classmethod
    def from_preprocessor(cls, config: dict) -> "ChromaSettings":
        return cls(sample_rate=int(config.get("sampling_rate", 32000)), n_fft=int(config.get("n_fft", 16384)),
                   hop=int(config.get("hop_length", 4096)), num_chroma=int(config.get("num_chroma", 12)),
                   max_seconds=int(config.get("chunk_length", 30)))


def power_spectrogram(wav: Tensor, n_fft: int, hop: int) -> Tensor:
    """``(batch, n)`` -> ``(batch, n_fft // 2 + 1, frames)``: torchaudio's ``Spectrogram(n_fft, hop_length=hop,
    power=2, center=True, normalized=True)`` (Hann window, reflect padding, divided by the window's L2 norm)."""
    window = torch.hann_window(n_fft, dtype=wav.dtype, device=wav.device)
    spec = torch.stft(wav, n_fft, hop_length=hop, win_length=n_fft, window=window, center=True, pad_mode="reflect",
                      normalized=False, onesided=True, return_complex=True)
    spec = spec / window.pow(2.0).sum().sqrt()
    return spec.abs().pow(2.0)


def chroma(samples: np.ndarray, settings: ChromaSettings = ChromaSettings()) -> Tensor:
    """Mono (or ``(channels, n)``, averaged) float audio at ``settings.sample_rate`` -> ``(frames, num_chroma)``
    float32, one 1 per frame at the strongest pitch class (C first), as MusicgenMelodyFeatureExtractor computes it."""
    from transformers.audio_utils import chroma_filter_bank

    wav = np.asarray(samples, dtype=np.float32)
    if wav.ndim == 2:
        wav = wav.mean(axis=0)
    wav = torch.from_numpy(np.ascontiguousarray(wav[: settings.max_seconds * settings.sample_rate]))[None]
    if wav.shape[-1] < settings.n_fft:
        pad = settings.n_fft - wav.shape[-1]
        wav = F.pad(wav, (pad // 2, pad // 2 + pad % 2))
    spec = power_spectrogram(wav, settings.n_fft, settings.hop)
    filters = torch.from_numpy(chroma_filter_bank(sampling_rate=settings.sample_rate, num_frequency_bins=settings.n_fft,
                                                  tuning=0, num_chroma=settings.num_chroma)).float()
    raw = torch.einsum("cf,...ft->...ct", filters, spec)
    norm = F.normalize(raw, p=float("inf"), dim=-2, eps=1e-6).transpose(1, 2)
    return torch.zeros_like(norm).scatter_(-1, norm.argmax(-1, keepdim=True), 1.0)[0]


class MelodyLayer(DecoderLayer):
    """A melody decoder layer: self-attention and the feed-forward, no cross-attention."""

    def __init__(self, args: LMArgs):
        super().__init__(args)
        del self.encoder_attn, self.encoder_attn_layer_norm

    def forward(self, x: Tensor, mask: Tensor, text_mask: Optional[Tensor], input_pos: Tensor) -> Tensor:
        x = x + self.self_attn(self.self_attn_layer_norm(x), mask, input_pos)
        return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))


class MelodyLM(MusicGenLM):
    """MusicGen's decoder for melody checkpoints: the conditioning is a prefix of the sequence (``set_conditioning``
    runs it through every layer once per request, into the KV cache), then tokens as ``MusicGenLM`` runs them."""

    layer_class = MelodyLayer

    def __init__(self, args: MelodyArgs):
        super().__init__(args)
        d = args.hidden_size
        self.audio_enc_to_dec_proj = nn.Linear(args.num_chroma, d) if args.num_chroma != d else None
        self.prefix_len = 0

    def setup_caches(self, max_batch: int, max_seq: int, max_text: int) -> None:
        """The KV cache for ``max_text`` prefix positions (chroma and text) then ``max_seq`` token positions."""
        if (max_batch, max_seq, max_text) == (self.max_batch, self.max_seq, self.max_text):
            return
        a = self.args
        dtype, device = self.layer_norm.weight.dtype, self.layer_norm.weight.device
        self.clear_caches()
        for layer in self.layers:
            layer.self_attn.kv_cache = KVCache(max_batch, a.num_heads, max_text + max_seq, a.head_dim, dtype, device)
        full = max_text + max_seq
        self.register_buffer("causal_mask", torch.ones(full, full, dtype=torch.bool, device=device).tril(),
                             persistent=False)
        self.register_buffer("text_mask", None, persistent=False)
        self.max_batch, self.max_seq, self.max_text = max_batch, max_seq, max_text

    @torch.no_grad()
    def set_conditioning(self, prefix: Tensor) -> None:
        """Run the prefix ``(batch, C, hidden)`` (``melody_prefix``) through the layers at positions ``0 .. C-1``,
        causally, filling the first C positions of every layer's KV cache; tokens then follow at ``C``."""
        b, c, _ = prefix.shape
        if b != self.max_batch or c > self.max_text:
            raise ValueError(f"a prefix {tuple(prefix.shape)} does not fit caches set up for batch {self.max_batch}, "
                             f"{self.max_text} prefix positions")
        if c + self.max_seq > self.args.max_positions:
            raise ValueError(f"a prefix of {c} and {self.max_seq} token positions exceed the model's "
                             f"{self.args.max_positions} positions")
        pos = torch.arange(c, device=prefix.device)
        x = prefix.to(self.layer_norm.weight.dtype) + self.positions[:c].to(self.layer_norm.weight.dtype)
        mask = self.causal_mask[None, None, :c, :c]
        for layer in self.layers:
            x = layer(x, mask, None, pos)
        self.prefix_len = c


@torch.no_grad()
def melody_prefix(lm: MelodyLM, text: Tensor, text_mask: Tensor, melody: Optional[Tensor], variations: int,
                  guided: bool) -> Tensor:
    """The decoder's prefix ``(batch, chroma_length + t, hidden)`` as transformers' generate() builds it.

    ``text``, ``text_mask``: T5's states and mask (``Checkpoint.encode_text``: ``variations`` rows, then as many
    unconditional ones when ``guided``); ``melody``: ``(frames, num_chroma)`` from :func:`chroma`, or None (text
    only: the null chroma for every row)."""
    args, dtype = lm.args, lm.layer_norm.weight.dtype
    text = text.to(dtype)
    if lm.enc_to_dec_proj is not None:
        text = lm.enc_to_dec_proj(text)
    text = text * text_mask[..., None].to(dtype)
    frames = 1 if melody is None else melody.shape[0]
    null = torch.zeros(frames, args.num_chroma, dtype=dtype, device=text.device)
    null[:, 0] = 1
    given = null if melody is None else melody.to(device=text.device, dtype=dtype)
    audio = torch.stack([given] * variations + ([null] * variations if guided else []))
    if lm.audio_enc_to_dec_proj is not None:
        audio = lm.audio_enc_to_dec_proj(audio)
    if frames < args.chroma_length:
        audio = audio.repeat(1, math.ceil(args.chroma_length / frames), 1)
    return torch.cat([audio[:, : args.chroma_length], text], dim=1)


class MelodyEngine(MusicGenEngine):
    """A melody checkpoint: the request's guide (``chords`` or a ``guide`` SMF) rendered on the take's grid at
    the model's rate, its chroma prepended with the text; without a guide, text only."""

    family = "musicgen-melody"

    def guide_audio(self, spec) -> Optional[np.ndarray]:
        """The spec's guide rendered over the take (its first bar line at sample 0); None without one. A guide
        stands for the melody: with a continuation too it is refused when the take starts (stemd/families.py)."""
        from stemd.models.guide_audio import spec_guide_audio

        return spec_guide_audio(spec, self.sample_rate, float(spec.seconds))

    def condition(self, spec, params, total: int, max_delay: int) -> int:
        lm = self.ck.lm
        audio = self.guide_audio(spec)
        words, grid = describe(spec)
        text, mask = self.ck.encode_text(words, spec.variations, params.guided, grid=grid)
        conditioning = (text, mask, spec.variations, params.guided)
        prefix = melody_prefix(lm, *conditioning[:2], None if audio is None else chroma(audio, self.ck.melody),
                               *conditioning[2:])
        max_seq = self.window(total, max_delay, lm.args.max_positions - prefix.shape[1])
        lm.setup_caches(prefix.shape[0], max_seq, 64 * math.ceil(prefix.shape[1] / 64))
        lm.set_conditioning(prefix)
        self._request = (audio, conditioning)
        return max_seq

    def generation(self, *args, **kwargs):
        gen = super().generation(*args, **kwargs)
        gen.on_slide = self.follow_window
        return gen

    def follow_window(self, frame: int) -> None:
        """A long take's window slid to start at ``frame``: the prefix is made again from the guide's audio from
        that frame on (as the first window's is from the take's start), so each window follows its own part."""
        audio, (text, mask, variations, guided) = self._request
        if audio is None:
            return
        part = audio[:, min(frame * self.ck.hop, audio.shape[-1] - 1):]
        self.ck.lm.set_conditioning(melody_prefix(self.ck.lm, text, mask, chroma(part, self.ck.melody), variations,
                                                  guided))
