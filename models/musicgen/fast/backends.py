"""Who runs the decoding step (``generate.step``): eagerly, through ``torch.compile``, as a replayed CUDA
graph (``cuda_graph.py``) or in ONNX Runtime (``onnx_step.py``). Each is a step object handed to
``generate.Generation``; the loop, the prefill and the sliding window are the same for all of them.
"""

from __future__ import annotations

from typing import Optional

import torch

from stemd.models.musicgen.generate import EagerStep, Generation, step

BACKENDS = ("eager", "compiled", "cuda-graph")


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

    def __call__(self, gen: Generation, span: int) -> None:
        self.fn(gen.lm, *gen.step_inputs(), span)


def make_backend(name: str, device: Optional[torch.device] = None):
    """The step object for ``name`` (``BACKENDS``; ONNX Runtime's needs an exported model: ``choose``)."""
    if name == "eager":
        return EagerStep()
    if name == "compiled":
        return CompiledStep()
    if name == "cuda-graph":
        from stemd.models.musicgen.fast.cuda_graph import CUDAGraphStep

        return CUDAGraphStep()
    raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {name!r}")
