"""The decoding step captured as CUDA graphs over the static KV cache and replayed once per token.

One graph per (static buffers, attention-span bucket, sampling settings); static buffers (tokens,
pattern, position, noise, temperature, top-p) per batch-size bucket, reused by every request of
that shape: a generation that binds to this backend decodes in these buffers, so replaying the
graph needs no copies and no host synchronisation. The sampling noise is drawn into its static
buffer from the request's generator before each replay (one kernel outside the graph), so the
tokens are those of eager decoding for the same seed.

The model's caches are shared by every request already (``MusicGenLM.setup_caches``), so one request
decodes at a time; graphs are dropped when ``setup_caches`` reallocates them.
"""

from __future__ import annotations

import torch

from stemd.models.musicgen.generate import Generation, step


def _cache_id(lm) -> tuple:
    layer = lm.layers[0]
    return (layer.self_attn.kv_cache.k.data_ptr(), layer.encoder_attn.cross_kv.k.data_ptr(),
            lm.text_mask.data_ptr())


class CUDAGraphStep:
    name = "cuda-graph"

    def __init__(self, fn=step, warmup: int = 2):
        """``fn``: the step to capture (``step``, or a ``torch.compile``d one for fused kernels)."""
        self.fn, self.warmup = fn, warmup
        self.buffers: dict[tuple, dict] = {}
        self.graphs: dict[tuple, torch.cuda.CUDAGraph] = {}
        self.pool = None
        self.cache_id = None

    def bind(self, gen: Generation) -> None:
        """Move the generation's state into this shape's static buffers (after every window start)."""
        if gen.device.type != "cuda":
            raise ValueError(f"the cuda-graph backend needs a CUDA device, not {gen.device}")
        key = (tuple(gen.tokens.shape), gen.lm.args.vocab_size, str(gen.device))
        buf = self.buffers.get(key)
        if buf is None:
            v, k, _ = gen.tokens.shape
            buf = self.buffers[key] = dict(
                tokens=torch.empty_like(gen.tokens), pattern=torch.empty_like(gen.pattern),
                pos_t=torch.empty_like(gen.pos_t),
                noise=torch.ones(v, k, gen.lm.args.vocab_size, dtype=torch.float32, device=gen.device),
                temperature=torch.empty((), dtype=torch.float32, device=gen.device),
                guidance=torch.empty((), dtype=torch.float32, device=gen.device),
                top_p=torch.empty((), dtype=torch.float32, device=gen.device))
        for name in ("tokens", "pattern", "pos_t", "temperature", "guidance"):
            static = buf[name]
            if getattr(gen, name) is not static:
                static.copy_(getattr(gen, name))
                setattr(gen, name, static)
        if gen.top_p is not None and gen.top_p is not buf["top_p"]:
            buf["top_p"].copy_(gen.top_p)
            gen.top_p = buf["top_p"]
        if gen.noise is not None:
            gen.noise = buf["noise"]

    def __call__(self, gen: Generation, span: int) -> None:
        cache_id = _cache_id(gen.lm)
        if cache_id != self.cache_id:      # caches reallocated: every graph points at freed memory
            self.graphs.clear()
            self.cache_id = cache_id
        p = gen.params
        key = (gen.tokens.data_ptr(), span, p.guided, p.temperature <= 0, p.top_k, gen.top_p is None)
        graph = self.graphs.get(key)
        if graph is None:
            graph = self.graphs[key] = self._capture(gen, span)
        graph.replay()

    def _capture(self, gen: Generation, span: int) -> torch.cuda.CUDAGraph:
        # warm-up runs execute the step: put the position back after each (the token they write at
        # pos + 1 and the cache entry at pos are rewritten identically by the replay that follows)
        saved = gen.pos_t.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.fn(gen.lm, *gen.step_inputs(), span)
                gen.pos_t.copy_(saved)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            self.fn(gen.lm, *gen.step_inputs(), span)
        self.pool = graph.pool()
        return graph
