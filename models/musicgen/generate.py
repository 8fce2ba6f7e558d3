"""MusicGen's decoding loop: prefill, decode_one_token, decode_n_tokens; sampling; the delay pattern.

Layout of a sequence (``tokens``: ``(batch, codebooks, max_seq)``): position 0 is the start token
(the pad id) in every codebook; codebook ``i`` is delayed by ``delay[i]`` positions (``i`` for mono,
``i // 2`` for stereo, whose codebooks interleave left and right), so frame ``f`` of codebook ``i``
sits at position ``f + delay[i] + 1``. ``pattern`` holds, per position, a token that is forced
(pads before the delay, the prompt's codes for a continuation) or -1 where the model samples.

Classifier-free guidance runs as one batch: rows ``[0, V)`` see the text, rows ``[V, 2V)`` see
nothing; both halves receive the same sampled tokens. Everything in ``decode_one_token`` is a tensor
op on fixed shapes: no ``.item()``, no data-dependent branching, sampling on the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch
from torch import Tensor

from stemd.models.musicgen.model import MusicGenLM


@dataclass
class Sampling:
    guidance: float = 3.0
    temperature: float = 1.0     # 0: greedy
    top_k: int = 250             # 0: off
    top_p: float = 0.0           # 0: off

    @property
    def guided(self) -> bool:
        return self.guidance > 1.0


def codebook_delays(num_codebooks: int, audio_channels: int) -> list[int]:
    return [i // 2 if audio_channels == 2 else i for i in range(num_codebooks)]


def build_pattern(prompt: Tensor, delays: list[int], max_seq: int, pad: int) -> Tensor:
    """Forced tokens per position ``(V, K, max_seq)``: pad before each codebook's delay, the prompt's
    codes ``(V, K, P)`` at their delayed positions, -1 (sample) elsewhere."""
    v, k, p = prompt.shape
    pattern = torch.full((v, k, max_seq), -1, dtype=torch.long, device=prompt.device)
    for i, d in enumerate(delays):
        pattern[:, i, : d + 1] = pad
        pattern[:, i, d + 1: d + 1 + p] = prompt[:, i]
    return pattern


def undelay(tokens: Tensor, delays: list[int], start: int, stop: int) -> Tensor:
    """Frames ``[start, stop)`` as ``(batch, K, n)`` codes from the delayed token sequence."""
    return torch.stack([tokens[:, i, start + d + 1: stop + d + 1] for i, d in enumerate(delays)], dim=1)


def sample_with_noise(logits: Tensor, temperature: Tensor, top_k: int, top_p: Optional[Tensor],
                      noise: Tensor) -> Tensor:
    """Tokens ``(..., )`` from logits ``(..., vocab)``: temperature, top-k, top-p, then a draw done as
    argmax(p / noise) with ``noise`` Exp(1) draws shaped like ``logits`` (an exact categorical sample that
    needs no host sync; the graph-captured step passes its own noise buffer)."""
    logits = logits.float() / temperature
    vocab = logits.shape[-1]
    if 0 < top_k < vocab:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p is not None:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = (sorted_p.cumsum(dim=-1) - sorted_p) > top_p
        probs = probs.scatter(-1, order, sorted_p.masked_fill(drop, 0.0))
    return torch.argmax(probs / noise, dim=-1)


def sample(logits: Tensor, temperature: Tensor, top_k: int, top_p: Optional[Tensor],
           generator: Optional[torch.Generator]) -> Tensor:
    """``sample_with_noise`` with the Exp(1) draw taken from ``generator``."""
    noise = torch.empty(logits.shape, dtype=torch.float32, device=logits.device).exponential_(1, generator=generator)
    return sample_with_noise(logits, temperature, top_k, top_p, noise)


def logits_to_tokens(logits: Tensor, params: Sampling, temperature: Tensor, top_p: Optional[Tensor],
                     generator: Optional[torch.Generator]) -> Tensor:
    """Guided logits of the last position -> ``(V, K)`` tokens."""
    logits = logits[:, :, -1].float()                                 # (B, K, vocab)
    if params.guided:
        cond, uncond = logits.chunk(2, dim=0)
        logits = uncond + (cond - uncond) * params.guidance
    if params.temperature <= 0:
        return logits.argmax(dim=-1)
    return sample(logits, temperature, params.top_k, top_p, generator)


def force(next_tokens: Tensor, forced: Tensor) -> Tensor:
    """Keep the forced tokens (``forced >= 0``) of this position; ``forced`` is ``(V, K)``."""
    return torch.where(forced >= 0, forced, next_tokens)


SPAN_BUCKET = 128


def attention_span(last_pos: int, max_seq: int) -> int:
    """Cache positions a step at ``last_pos`` must read, rounded up to a bucket (static within a bucket)."""
    return min(max_seq, SPAN_BUCKET * (last_pos // SPAN_BUCKET + 1))


def prefill(lm: MusicGenLM, tokens: Tensor, input_pos: Tensor, forced: Tensor, params: Sampling,
            temperature: Tensor, top_p: Optional[Tensor], generator, span: Optional[int] = None) -> Tensor:
    logits = lm(tokens, input_pos, span)
    return force(logits_to_tokens(logits, params, temperature, top_p, generator), forced)


def decode_one_token(lm: MusicGenLM, tokens: Tensor, input_pos: Tensor, forced: Tensor, params: Sampling,
                     temperature: Tensor, top_p: Optional[Tensor], generator, span: Optional[int] = None) -> Tensor:
    """One step: ``tokens`` ``(B, K, 1)`` at ``input_pos`` ``(1,)`` -> the next ``(V, K)`` tokens."""
    logits = lm(tokens, input_pos, span)
    return force(logits_to_tokens(logits, params, temperature, top_p, generator), forced)


class Generation:
    """One request's decoding state: the token buffer, the pattern and the sampling tensors.

    ``decode_n_tokens`` advances it; ``frames_ready`` says how many frames are complete in every codebook.
    A window that fills up slides: the last ``keep`` frames become the prompt of a fresh prefill.
    """

    def __init__(self, lm: MusicGenLM, variations: int, params: Sampling, max_seq: int,
                 prompt: Optional[Tensor] = None, seed: Optional[int] = None, keep_frames: int = 500):
        self.lm, self.params, self.variations = lm, params, variations
        device = lm.layer_norm.weight.device
        self.device = device
        self.batch = variations * (2 if params.guided else 1)
        args = lm.args
        self.delays = codebook_delays(args.num_codebooks, args.audio_channels)
        self.max_delay = max(self.delays)
        self.max_seq = max_seq
        self.keep_frames = keep_frames
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed if seed is not None else torch.seed() % (2 ** 63))
        self.temperature = torch.tensor(max(params.temperature, 1e-5), device=device)
        self.top_p = torch.tensor(params.top_p, device=device) if 0 < params.top_p < 1 else None
        self.tokens = torch.full((variations, args.num_codebooks, max_seq), args.pad_token, dtype=torch.long,
                                 device=device)
        # frames are counted from the start of the request (prompt included); ``offset`` is the frame
        # that sits at window position 1 after the window has slid
        self.offset = 0
        self.history: list[Tensor] = []      # complete frames before the current window, not kept
        self._start(prompt if prompt is not None else torch.zeros(args.num_codebooks, 0, dtype=torch.long))

    def _start(self, prompt: Tensor) -> None:
        """(Re)start the window with ``prompt`` ``(K, P)`` codes (or ``(V, K, P)``) and prefill it."""
        if prompt.dim() == 2:
            prompt = prompt[None].expand(self.variations, -1, -1)
        p = prompt.shape[-1]
        if p + self.max_delay + 2 > self.max_seq:
            raise ValueError(f"a prompt of {p} frames does not fit a window of {self.max_seq} positions")
        args = self.lm.args
        self.pattern = build_pattern(prompt.to(self.device), self.delays, self.max_seq, args.pad_token)
        self.tokens.fill_(args.pad_token)
        # every position up to p holds known tokens (codebook 0 has no delay); prefill them at once
        known = torch.where(self.pattern[:, :, : p + 1] >= 0, self.pattern[:, :, : p + 1], args.pad_token)
        self.tokens[:, :, : p + 1] = known
        self.pos = p                         # the last position whose tokens are in ``tokens``
        batch_tokens = self._batched(self.tokens[:, :, : p + 1])
        nxt = prefill(self.lm, batch_tokens, torch.arange(p + 1, device=self.device), self.pattern[:, :, p + 1],
                      self.params, self.temperature, self.top_p, self.generator,
                      attention_span(p, self.max_seq))
        self.tokens[:, :, p + 1] = nxt
        self.pos = p + 1

    def _batched(self, tokens: Tensor) -> Tensor:
        return torch.cat([tokens, tokens], dim=0) if self.params.guided else tokens

    @property
    def frames_ready(self) -> int:
        """Frames complete in every codebook, counted from the start of the request."""
        return self.offset + max(0, self.pos - self.max_delay)

    def frames(self, start: int, stop: int) -> Tensor:
        """Complete frames ``[start, stop)`` (request-absolute) as ``(V, K, n)`` codes."""
        assert start >= self.offset, "frames before the window are gone"
        return undelay(self.tokens, self.delays, start - self.offset, stop - self.offset)

    def decode_n_tokens(self, n: int) -> None:
        for _ in range(n):
            if self.pos + 1 >= self.max_seq:
                self._slide()
            pos = torch.tensor([self.pos], device=self.device)
            cur = self._batched(self.tokens[:, :, self.pos: self.pos + 1])
            nxt = decode_one_token(self.lm, cur, pos, self.pattern[:, :, self.pos + 1], self.params,
                                   self.temperature, self.top_p, self.generator,
                                   attention_span(self.pos, self.max_seq))
            self.tokens[:, :, self.pos + 1] = nxt
            self.pos += 1

    def _slide(self) -> None:
        """The window is full: keep the last ``keep_frames`` complete frames as the prompt and prefill."""
        ready = self.frames_ready
        keep = min(self.keep_frames, ready - self.offset)
        start = ready - keep
        prompt = self.frames(start, ready)
        self.offset = start
        self._start(prompt)


@torch.no_grad()
def generate_tokens(lm: MusicGenLM, n_frames: int, variations: int, params: Sampling, max_seq: int,
                    prompt: Optional[Tensor] = None, seed: Optional[int] = None) -> Tensor:
    """All frames at once, ``(V, K, P + n_frames)`` codes including a prompt of P frames (tests, bench)."""
    gen = Generation(lm, variations, params, max_seq, prompt=prompt, seed=seed)
    return all_frames(gen, (prompt.shape[-1] if prompt is not None else 0) + n_frames)


def all_frames(gen: "Generation", total: int) -> Tensor:
    """Decode until ``total`` frames exist: ``(V, K, total)``, gathered as they complete (a sliding window
    forgets old frames)."""
    return torch.cat(list(iter_frames(gen, total, lambda: False, lambda _frames: None)), dim=-1)


def iter_frames(gen: Generation, total: int, should_stop: Callable[[], bool],
                on_step: Callable[[int], None]) -> Iterator[Tensor]:
    """Newly complete frames ``(V, K, n)`` as decoding goes, until ``total`` frames exist."""
    emitted = 0
    while emitted < total:
        if should_stop():
            from stemd.models.base import Cancelled

            raise Cancelled()
        if gen.frames_ready <= emitted:
            gen.decode_n_tokens(1)
            on_step(min(gen.frames_ready, total))
            continue
        stop = min(gen.frames_ready, total)
        yield gen.frames(emitted, stop)
        emitted = stop
