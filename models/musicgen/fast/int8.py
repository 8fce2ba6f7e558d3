"""Weight-only int8 decoding on the CPU: the ``int8`` backend.

One decoding step reads every weight of the language model once for a batch of two rows (the two
halves of guidance): it is memory-bound. Here every linear layer holds its weight as int8 with one
scale per output row (symmetric, absolute maximum / 127), a quarter of float32's bytes and half of
bfloat16's, and multiplies with ``aten._weight_int8pack_mm``, whose CPU kernel reads the int8 rows
and accumulates in float32 from bfloat16 activations. The rest of the model (embeddings, norms,
attention over the KV cache) runs in bfloat16.

The tokens are not float32's: each weight is rounded to 1/254 of its row's range. The logit error
against float32 eager is measured by ``logit_error`` (tests, bench/decode.py) and stated in
docs/backends.md. Only the weights change; the loop, sampling and the delay pattern are the eager
step's own.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

ACTIVATIONS = torch.bfloat16


class Int8Linear(nn.Module):
    """``nn.Linear`` with int8 weights ``(out, in)`` and one bfloat16 scale per output row."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()
        scale = (w.abs().amax(dim=1) / 127.0).clamp_min(torch.finfo(torch.float32).tiny)
        self.register_buffer("weight", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scales", scale.to(ACTIVATIONS))
        bias = linear.bias
        self.register_buffer("bias", bias.detach().to(ACTIVATIONS) if bias is not None else None)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, self.in_features).to(ACTIVATIONS).contiguous(),
                                               self.weight, self.scales)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights"


def available() -> bool:
    """Whether this torch has the int8 kernel on the CPU (it is an ATen op, not an extension)."""
    try:
        x = torch.ones(2, 32, dtype=ACTIVATIONS)
        w = torch.ones(32, 32, dtype=torch.int8)
        torch.ops.aten._weight_int8pack_mm(x, w, torch.ones(32, dtype=ACTIVATIONS))
        return True
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


def quantize(lm: nn.Module) -> nn.Module:
    """A copy of the language model in bfloat16 with every ``nn.Linear`` as an :class:`Int8Linear`
    (quantized from the float32 weights when ``lm`` holds them)."""
    out = copy.deepcopy(lm)
    out.clear_caches()
    linears = {name: module for name, module in lm.named_modules() if isinstance(module, nn.Linear)}
    out.to(ACTIVATIONS)
    for name, linear in linears.items():
        parent_name, _, attr = name.rpartition(".")
        parent = out.get_submodule(parent_name) if parent_name else out
        setattr(parent, attr, Int8Linear(linear))
    return out


def is_int8(lm: nn.Module) -> bool:
    return any(isinstance(m, Int8Linear) for m in lm.modules())


@torch.no_grad()
def logit_error(reference: nn.Module, other: nn.Module, text: Tensor, mask: Tensor, tokens: Tensor) -> dict:
    """Logits of ``other`` against ``reference`` (float32) on the same tokens ``(B, K, t)`` and text:
    the largest absolute difference, that over the reference's logit spread (standard deviation), and
    how often the most likely code of a position differs."""
    b, _, t = tokens.shape
    outs = []
    for model in (reference, other):
        model.setup_caches(b, max(64, t), max(64, text.shape[1]))
        model.set_conditioning(text, mask)
        outs.append(model(tokens, torch.arange(t)).float())
    ref, got = outs
    diff = (got - ref).abs()
    return {"max_abs": float(diff.max()), "max_over_spread": float(diff.max() / ref.std()),
            "mean_abs": float(diff.mean()),
            "argmax_differs": float((got.argmax(-1) != ref.argmax(-1)).float().mean())}
