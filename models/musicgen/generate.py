"""MusicGen's decoding loop: prefill, what one step does, decode_n_tokens; sampling; the delay pattern.

Layout of a sequence (``tokens``: ``(batch, codebooks, max_seq)``): position 0 is the start token
(the pad id) in every codebook; codebook ``i`` is delayed by ``delay[i]`` positions (``i`` for mono,
``i // 2`` for stereo, whose codebooks interleave left and right), so frame ``f`` of codebook ``i``
sits at position ``f + delay[i] + 1``. ``pattern`` holds, per position, a token that is forced
(pads before the delay, the prompt's codes for a continuation, pads after a codebook's last frame
once the request's length is known) or -1 where the model samples.

Classifier-free guidance runs as one batch: rows ``[0, V)`` see the text, rows ``[V, 2V)`` see
nothing; both halves receive the same sampled tokens. Everything in ``step`` is a tensor op on fixed
shapes: no ``.item()``, no data-dependent branching, sampling on the device. Who runs the step (eagerly,
compiled, as a CUDA graph, in ONNX Runtime) is a step object handed to ``Generation`` (``fast/``).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import torch
from torch import Tensor

from stemd.models.musicgen.model import MusicGenLM
from stemd.protocol import Sampling  # noqa: F401  (the request's sampling settings, guidance resolved)


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


def force_end(pattern: Tensor, delays: list[int], end: int, pad: int) -> None:
    """Pads, in place, at every position after frame ``end - 1`` of each codebook (window-relative
    frames): the steps that finish the delayed codebooks then see pads where codebook 0 has ended, as
    audiocraft's and transformers' generate feed them, not codes sampled past the end."""
    for i, d in enumerate(delays):
        pattern[:, i, max(0, end + d + 1):] = pad


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


def next_tokens(logits: Tensor, guided: bool, guidance, greedy: bool, temperature: Tensor, top_k: int,
                top_p: Optional[Tensor], noise: Optional[Tensor]) -> Tensor:
    """The last position's logits ``(B, K, vocab)`` -> ``(V, K)`` tokens: guidance, then argmax or a draw."""
    logits = logits.float()
    if guided:
        cond, uncond = logits.chunk(2, dim=0)
        logits = uncond + (cond - uncond) * guidance
    if greedy:
        return logits.argmax(dim=-1)
    return sample_with_noise(logits, temperature, top_k, top_p, noise)


def step(forward, tokens: Tensor, pattern: Tensor, pos: Tensor, noise: Optional[Tensor], guidance: Tensor,
         temperature: Tensor, top_p: Optional[Tensor], guided: bool, greedy: bool, top_k: int, span: int) -> None:
    """What one decoding step does, in place: read ``tokens[:, :, pos]`` ``(V, K, max_seq)``, run
    ``forward(tokens (B, K, 1), pos, span)`` (the language model, or its ONNX Runtime export), write the
    next tokens (sampled, or forced by ``pattern``) at ``pos + 1`` and add 1 to ``pos``.

    The position is a ``(1,)`` long tensor that the step reads and advances, tokens are read and written
    with ``index_select``/``index_copy_``, and ``noise`` ``(V, K, vocab)`` (Exp(1) draws, None when greedy)
    is drawn from the request's generator just before the step. ``guidance``, ``temperature`` and
    ``top_p`` are 0-dim tensors (a new value needs no new graph); ``guided``, ``greedy``, ``top_k`` and
    ``span`` (``attention_span``) choose the graph. Nothing here reads a tensor value on the host, so the
    step traces into one graph (``torch.compile(fullgraph=True)``) and is captured as one CUDA graph."""
    cur = tokens.index_select(2, pos)                                  # (V, K, 1)
    if guided:
        cur = torch.cat([cur, cur], dim=0)
    logits = forward(cur, pos, span)[:, :, -1]                         # (B, K, vocab)
    nxt = next_tokens(logits, guided, guidance, greedy, temperature, top_k, top_p, noise)
    nxt_pos = pos + 1
    forced = pattern.index_select(2, nxt_pos)[..., 0]                 # (V, K)
    nxt = torch.where(forced >= 0, forced, nxt)
    tokens.index_copy_(2, nxt_pos, nxt[..., None])
    pos.copy_(nxt_pos)


SPAN_BUCKET = 128


@contextmanager
def step_threads(step_object):
    """torch's intra-op threads set to the step object's ``torch_threads`` while it runs (none said: as
    they are); the ONNX Runtime step keeps torch to one thread beside its own pool."""
    want = getattr(step_object, "torch_threads", None)
    have = torch.get_num_threads()
    if want is None or want == have:
        yield
        return
    torch.set_num_threads(want)
    try:
        yield
    finally:
        torch.set_num_threads(have)


def attention_span(last_pos: int, max_seq: int) -> int:
    """Cache positions a step at ``last_pos`` must read, rounded up to a bucket (static within a bucket)."""
    return min(max_seq, SPAN_BUCKET * (last_pos // SPAN_BUCKET + 1))


class EagerStep:
    """The step as plain torch ops: what the other steps (``fast/``) are checked against. A step object
    is called once per token; ``bind`` after every (re)start of a generation's window."""

    name = "eager"

    def bind(self, gen: "Generation") -> None:
        pass

    def __call__(self, gen: "Generation", span: int) -> None:
        step(gen.lm, *gen.step_inputs(), span)


class Generation:
    """One request's decoding state: the token buffer, the pattern and the sampling tensors, advanced
    by a step object (``EagerStep``, or one from ``fast/``: compiled, CUDA graph, ONNX Runtime).

    ``pos`` is the last position whose tokens are written (counted on the host); ``pos_t`` ``(1,)`` is
    the same position held on the device, which the step reads and advances without a host sync.
    ``frames_ready`` says how many frames are complete in every codebook. A window that fills up
    slides: the last ``keep`` frames become the prompt of a fresh prefill. ``end_at(total)`` says how
    many frames the request has (``iter_frames`` calls it): past each codebook's last frame the
    pattern forces pads.
    """

    def __init__(self, lm: MusicGenLM, variations: int, params: Sampling, max_seq: int,
                 prompt: Optional[Tensor] = None, seed: Optional[int] = None, keep_frames: int = 500,
                 step=None):
        if params.guidance is None:
            raise ValueError("the guidance must be resolved to the model's own (Sampling.with_guidance)")
        self.lm, self.params, self.variations = lm, params, variations
        self.step = step if step is not None else EagerStep()
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
        self.greedy = params.temperature <= 0
        self.temperature = torch.tensor(max(params.temperature, 1e-5), device=device)
        self.guidance = torch.tensor(params.guidance, dtype=torch.float32, device=device)
        self.top_p = torch.tensor(params.top_p, device=device) if 0 < params.top_p < 1 else None
        # as audiocraft's LMModel samples: top_p when it is set, else top_k
        self.top_k = 0 if self.top_p is not None else params.top_k
        self.tokens = torch.full((variations, args.num_codebooks, max_seq), args.pad_token, dtype=torch.long,
                                 device=device)
        # frames are counted from the start of the request (prompt included); ``offset`` is the frame
        # that sits at window position 1 after the window has slid
        self.offset = 0
        self.end: Optional[int] = None    # the request's frame count, once known (end_at)
        self._start(prompt if prompt is not None else torch.zeros(args.num_codebooks, 0, dtype=torch.long))

    def step_inputs(self) -> tuple:
        """The step's arguments after ``forward`` and before ``span``."""
        p = self.params
        return (self.tokens, self.pattern, self.pos_t, self.noise, self.guidance, self.temperature, self.top_p,
                p.guided, self.greedy, self.top_k)

    def _draw(self) -> None:
        if self.noise is not None:
            self.noise.exponential_(1, generator=self.generator)

    def _start(self, prompt: Tensor) -> None:
        """(Re)start the window with ``prompt`` ``(K, P)`` codes (or ``(V, K, P)``) and prefill it."""
        if prompt.dim() == 2:
            prompt = prompt[None].expand(self.variations, -1, -1)
        p = prompt.shape[-1]
        if p + self.max_delay + 2 > self.max_seq:
            raise ValueError(f"a prompt of {p} frames does not fit a window of {self.max_seq} positions")
        args = self.lm.args
        self.pattern = build_pattern(prompt.to(self.device), self.delays, self.max_seq, args.pad_token)
        if self.end is not None:
            force_end(self.pattern, self.delays, self.end - self.offset, args.pad_token)
        self.tokens.fill_(args.pad_token)
        shape = (self.variations, args.num_codebooks, args.vocab_size)
        self.noise = None if self.greedy else torch.empty(shape, dtype=torch.float32, device=self.device)
        # every position up to p holds known tokens (codebook 0 has no delay): prefill them at once
        known = torch.where(self.pattern[:, :, : p + 1] >= 0, self.pattern[:, :, : p + 1], args.pad_token)
        self.tokens[:, :, : p + 1] = known
        batch_tokens = torch.cat([known, known], dim=0) if self.params.guided else known
        first = getattr(self.step, "first_logits", None)
        if p == 0 and first is not None:   # one token at position 0: the step object's own forward runs it
            logits = first(self, batch_tokens)
        else:
            logits = self.lm(batch_tokens, torch.arange(p + 1, device=self.device), attention_span(p, self.max_seq))
        self._draw()
        nxt = next_tokens(logits[:, :, -1], self.params.guided, self.guidance, self.greedy, self.temperature,
                          self.top_k, self.top_p, self.noise)
        forced = self.pattern[:, :, p + 1]
        self.tokens[:, :, p + 1] = torch.where(forced >= 0, forced, nxt)
        self.pos = p + 1
        self.pos_t = torch.tensor([self.pos], dtype=torch.long, device=self.device)
        self.step.bind(self)

    def end_at(self, total: int) -> None:
        """The request has ``total`` frames (request-absolute, prompt included): pads after each
        codebook's last one (in place: a step that holds the pattern's buffer sees them)."""
        if self.end != total:
            self.end = total
            force_end(self.pattern, self.delays, total - self.offset, self.lm.args.pad_token)

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
            with step_threads(self.step):
                self._draw()
                self.step(self, attention_span(self.pos, self.max_seq))
            self.pos += 1

    #: called with the new window's first frame (request-absolute) when the window slides, before its prefill
    on_slide: Optional[Callable[[int], None]] = None

    def _slide(self) -> None:
        """The window is full: keep the last ``keep_frames`` complete frames as the prompt and prefill."""
        ready = self.frames_ready
        keep = min(self.keep_frames, ready - self.offset)
        start = ready - keep
        prompt = self.frames(start, ready)
        self.offset = start
        if self.on_slide is not None:
            self.on_slide(start)
        self._start(prompt)


@torch.no_grad()
def generate_tokens(lm: MusicGenLM, n_frames: int, variations: int, params: Sampling, max_seq: int,
                    prompt: Optional[Tensor] = None, seed: Optional[int] = None, step=None,
                    keep_frames: int = 500) -> Tensor:
    """All frames at once, ``(V, K, P + n_frames)`` codes including a prompt of P frames (tests, bench)."""
    gen = Generation(lm, variations, params, max_seq, prompt=prompt, seed=seed, step=step, keep_frames=keep_frames)
    return all_frames(gen, (prompt.shape[-1] if prompt is not None else 0) + n_frames)


def all_frames(gen: "Generation", total: int) -> Tensor:
    """Decode until ``total`` frames exist: ``(V, K, total)``, gathered as they complete (a sliding window
    forgets old frames)."""
    return torch.cat(list(iter_frames(gen, total, lambda: False, lambda _frames: None)), dim=-1)


def iter_frames(gen: Generation, total: int, should_stop: Callable[[], bool],
                on_step: Callable[[int], None]) -> Iterator[Tensor]:
    """Newly complete frames ``(V, K, n)`` as decoding goes, until ``total`` frames exist."""
    gen.end_at(total)
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
