"""Who runs the step: eagerly, through ``torch.compile``, or as a replayed CUDA graph.

``FastGeneration`` is ``generate.Generation`` (same prefill, same sliding window, same frames) whose
per-token loop calls a backend with the position held on the device; the host only counts steps,
so a step costs no host synchronisation.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from stemd.models.musicgen.fast.step import step
from stemd.models.musicgen.generate import Generation, Sampling, all_frames, attention_span
from stemd.models.musicgen.model import MusicGenLM

BACKENDS = ("eager", "compiled", "cuda-graph")


def step_args(gen: "FastGeneration", span: int) -> tuple:
    p = gen.params
    return (gen.lm, gen.tokens, gen.pattern, gen.pos_t, gen.noise, gen.guidance, gen.temperature, gen.top_p,
            p.guided, p.temperature <= 0, p.top_k, span)


class EagerStep:
    """The step as plain torch ops (the reference the others are checked against)."""

    name = "eager"

    def bind(self, gen: "FastGeneration") -> None:
        """Called after every (re)start of a generation's window."""

    def run(self, fn, gen: "FastGeneration", span: int) -> None:
        fn(*step_args(gen, span))

    def __call__(self, gen: "FastGeneration", span: int) -> None:
        self.run(step, gen, span)


class CompiledStep(EagerStep):
    """``torch.compile(step, fullgraph=True)``: one graph per attention-span bucket (``dynamic=False``),
    a graph break is an error rather than a silent slowdown. Graphs are keyed by batch size, span
    bucket, guidance on/off, greedy and top-k: more than dynamo's default 8 per code object."""

    name = "compiled"
    RECOMPILE_LIMIT = 256

    def __init__(self, backend: str = "inductor", mode: Optional[str] = None):
        import torch._dynamo

        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, self.RECOMPILE_LIMIT)
        self.fn = torch.compile(step, fullgraph=True, dynamic=False, backend=backend, mode=mode)

    def __call__(self, gen: "FastGeneration", span: int) -> None:
        self.run(self.fn, gen, span)


def make_backend(name: str, device: torch.device):
    if name == "eager":
        return EagerStep()
    if name == "compiled":
        return CompiledStep()
    if name == "cuda-graph":
        from stemd.models.musicgen.fast.cuda_graph import CUDAGraphStep

        return CUDAGraphStep()
    raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {name!r}")


class FastGeneration(Generation):
    """``Generation`` stepped by a backend over device-held state: ``pos_t`` ``(1,)`` is the position
    the step reads (the host's ``pos`` counts along without reading it back), ``noise`` the sampling
    draw, refilled from the request's generator before each step."""

    def __init__(self, lm: MusicGenLM, variations: int, params: Sampling, max_seq: int,
                 prompt: Optional[Tensor] = None, seed: Optional[int] = None, keep_frames: int = 500,
                 backend=None):
        self.backend = backend if backend is not None else EagerStep()
        super().__init__(lm, variations, params, max_seq, prompt=prompt, seed=seed, keep_frames=keep_frames)

    def _start(self, prompt: Tensor) -> None:
        super()._start(prompt)
        self.pos_t = torch.tensor([self.pos], dtype=torch.long, device=self.device)
        self.guidance = torch.tensor(self.params.guidance, dtype=torch.float32, device=self.device)
        shape = (self.variations, self.lm.args.num_codebooks, self.lm.args.vocab_size)
        self.noise = (None if self.params.temperature <= 0
                      else torch.empty(shape, dtype=torch.float32, device=self.device))
        self.backend.bind(self)

    def decode_n_tokens(self, n: int) -> None:
        for _ in range(n):
            if self.pos + 1 >= self.max_seq:
                self._slide()
            if self.noise is not None:
                self.noise.exponential_(1, generator=self.generator)
            self.backend(self, attention_span(self.pos, self.max_seq))
            self.pos += 1


@torch.no_grad()
def generate_tokens_fast(lm: MusicGenLM, n_frames: int, variations: int, params: Sampling, max_seq: int,
                         prompt: Optional[Tensor] = None, seed: Optional[int] = None, backend=None,
                         keep_frames: int = 500) -> Tensor:
    """``generate.generate_tokens`` through a backend: ``(V, K, P + n_frames)`` codes."""
    gen = FastGeneration(lm, variations, params, max_seq, prompt=prompt, seed=seed, backend=backend,
                         keep_frames=keep_frames)
    return all_frames(gen, (prompt.shape[-1] if prompt is not None else 0) + n_frames)
