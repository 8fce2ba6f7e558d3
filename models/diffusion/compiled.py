"""The denoising loop's DiT forward compiled with torch.compile: one backend setting per model, eager the fallback.

    use_backend(engine, "compiled")     # the engine's pipeline now calls the compiled DiT forward
    use_backend(engine, "eager")        # and back

A diffusion take spends its time in the DiT's forward, called once (twice with guidance) per denoising
step. ``compiled`` runs it through ``torch.compile``:

* on a CPU, each of the DiT's repeated blocks (the model's ``_repeated_blocks``: Stable Audio 3's 16
  ``StableAudio3DiTBlock``) is compiled: one block's code is compiled once and every block runs it, so
  compiling costs one block's time, not the whole forward's (Inductor's C++ kernels take minutes on a
  2-core machine); a model without repeated blocks compiles its whole forward;
* on CUDA, the whole forward with ``mode="reduce-overhead"`` (CUDA graphs: the step's kernel launches
  replayed as one).

Shapes are static per canvas length (``dynamic=False``): each length the engine asks for (the take x 1.1 +
one bar, in whole latent frames) compiles once, on its first take, and is reused; :data:`CACHE_LIMIT`
lengths are kept per model. Where compiling fails (no C++ compiler for Inductor, an operator it cannot
trace), the model runs eagerly and says so once in the log.

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
    return "reduce-overhead" if on_cuda(device) else None


def on_cuda(device) -> bool:
    return getattr(device, "type", str(device)) == "cuda"


def repeated_blocks(transformer) -> list:
    """The DiT's repeated blocks (diffusers' ``_repeated_blocks`` class names), in order."""
    names = set(getattr(transformer, "_repeated_blocks", None) or ())
    return [m for m in transformer.modules() if type(m).__name__ in names]


class CompiledForward:
    """The transformer's ``forward`` compiled (whole, or block by block: see the module's docstring),
    falling back to the eager forward (for good) when compiling or running the compiled code raises."""

    def __init__(self, transformer, device):
        import torch

        self.eager = transformer.forward
        self.failed: Optional[str] = None
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, CACHE_LIMIT)
        self.blocks = [] if on_cuda(device) else repeated_blocks(transformer)
        #: what is compiled, for the log and the bench: "N blocks" or "forward[, mode]"
        self.scope = f"{len(self.blocks)} blocks" if self.blocks else ", ".join(
            ["forward"] + ([compile_mode(device)] if compile_mode(device) else []))
        if self.blocks:
            # torch.compile of each block's call, as nn.Module.compile does: the code is one for all blocks
            # (Dynamo inlines nn.Modules: their parameters are inputs), so it is compiled once
            self.block_calls = [torch.compile(b._call_impl, dynamic=False, fullgraph=False) for b in self.blocks]
            self.compiled = self._through_blocks
        else:
            self.compiled = torch.compile(self.eager, mode=compile_mode(device), dynamic=False, fullgraph=False)

    def _through_blocks(self, *args, **kwargs):
        """The eager forward with each repeated block's call compiled (for this call only)."""
        for block, call in zip(self.blocks, self.block_calls):
            block._compiled_call_impl = call
        try:
            return self.eager(*args, **kwargs)
        finally:
            for block in self.blocks:
                block._compiled_call_impl = None

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
