"""The denoising loop's DiT forward compiled with torch.compile: one backend setting per model, eager the fallback.

    use_backend(engine, "compiled")     # the engine's pipeline now calls the compiled DiT forward
    use_backend(engine, "eager")        # and back

A diffusion take spends its time in the DiT's forward, called once (twice with guidance) per denoising
step. ``compiled`` swaps the transformer's ``forward`` for ``torch.compile`` of it: Inductor's fused
kernels on a CPU, and on CUDA ``mode="reduce-overhead"`` (CUDA graphs: the step's kernel launches
replayed as one). Shapes are static per canvas length (``dynamic=False``): each length the engine asks
for (the take x 1.1 + one bar, in whole latent frames) compiles once, on its first take, and is reused;
:data:`CACHE_LIMIT` lengths are kept per model. Where compiling fails (no C++ compiler for Inductor, an
operator it cannot trace), the model runs eagerly and says so once in the log.

Nothing else changes: the same pipeline call, the same generators and noise, so a compiled take equals
the eager one within floating-point reassociation (tests/test_diffusion_compiled.py: 1e-4 in float32 on
the test models).
"""

from __future__ import annotations

import logging
from typing import Optional

BACKENDS = ("eager", "compiled")
#: canvas lengths compiled and kept per model (torch._dynamo's recompile limit for the forward)
CACHE_LIMIT = 16
log = logging.getLogger("stemd.models.diffusion")


def compile_mode(device) -> Optional[str]:
    """``reduce-overhead`` (CUDA graphs) on CUDA; Inductor's default elsewhere."""
    return "reduce-overhead" if getattr(device, "type", str(device)) == "cuda" else None


class CompiledForward:
    """The transformer's ``forward`` compiled, falling back to the eager forward (for good) when compiling
    or running the compiled graph raises."""

    def __init__(self, transformer, device):
        import torch

        self.eager = transformer.forward
        self.failed: Optional[str] = None
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, CACHE_LIMIT)
        self.compiled = torch.compile(self.eager, mode=compile_mode(device), dynamic=False, fullgraph=False)

    def __call__(self, *args, **kwargs):
        if self.failed is None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as e:   # Inductor raises many types (no compiler, an untraceable operator)
                self.failed = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                log.warning("the compiled DiT forward failed (%s): this model runs eagerly", self.failed)
        return self.eager(*args, **kwargs)


def use_backend(engine, backend: str) -> str:
    """Run ``engine``'s DiT eagerly or compiled from its next take; returns the backend set. Switching back
    to ``compiled`` reuses what was compiled before."""
    if backend not in BACKENDS:
        raise ValueError(f"diffusion backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    transformer = engine.pipe.transformer
    held = getattr(transformer, "_stemd_compiled", None)
    if backend == "eager":
        if held is not None:
            transformer.forward = held.eager
        return backend
    if held is None:
        held = CompiledForward(transformer, engine.device)
        transformer._stemd_compiled = held
    transformer.forward = held
    return backend


def backend_of(engine) -> str:
    held = getattr(engine.pipe.transformer, "_stemd_compiled", None)
    if held is None or engine.pipe.transformer.forward is not held:
        return "eager"
    return "eager" if held.failed else "compiled"
