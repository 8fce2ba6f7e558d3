"""How a request's tokens are drawn, and the defaults every part of stemd takes them from.

The request (``stemd.protocol.GenerateRequest``), the engines' specs, MusicGen's decoding loop and
render jobs all take a :class:`Sampling`; its defaults live here and nowhere else. Core: stdlib only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional


@dataclass(frozen=True)
class Sampling:
    """``temperature`` 0 is greedy (inside stemd only: requests ask for 0.01..5); ``top_k`` and ``top_p``
    0 are off; ``guidance`` None is the model's own (MusicGen 3, distilled diffusion models 1)."""

    temperature: float = 1.0
    top_k: int = 250
    top_p: float = 0.0
    guidance: Optional[float] = None

    TOKEN_KEYS = ("temperature", "top_k", "top_p")      # what only token-sampling models have

    @property
    def guided(self) -> bool:
        return self.guidance is not None and self.guidance > 1.0

    def with_guidance(self, default: float) -> "Sampling":
        """This, with ``default`` where guidance is the model's own."""
        return self if self.guidance is not None else replace(self, guidance=default)

    def token_keys_given(self) -> list[str]:
        """The token-sampling keys set away from their defaults (a diffusion model refuses them)."""
        return [k for k in self.TOKEN_KEYS if getattr(self, k) != getattr(DEFAULT_SAMPLING, k)]


DEFAULT_SAMPLING = Sampling()
