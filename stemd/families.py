"""Which generate keys each model family takes, and the check that refuses the others before any work.

Most generate keys (prompt, bars, bpm, meter, seed ...) are every model's. The keys below are some
families' only; a request that sets one its model's family lacks is refused with ``unsupported_key``
when it arrives, before ``/stemd/accepted``, whether the model is loaded or not (the daemon knows every
model's family from the start). docs/protocol.md lists the same table. Core: no torch.
"""

from __future__ import annotations

from stemd.protocol import MODEL_KEYS, GenerateRequest, ProtocolError
from stemd.sampling import DEFAULT_SAMPLING, Sampling

#: family -> the keys of :data:`FAMILY_ONLY` it takes
FAMILY_KEYS = {
    "click": frozenset(),
    "musicgen": frozenset({"temperature", "top_k", "top_p", "guidance"}),
    "stable-audio-3": frozenset({"steps", "guidance", "strength", "guide", "chords"}),
    "ace-step": frozenset({"steps", "guidance", "track", "extract", "repaint", "guide", "chords", "guide_strength"}),
}
#: the keys that only some families take
FAMILY_ONLY = (*Sampling.TOKEN_KEYS, "guidance", *MODEL_KEYS)


def keys_set(request: GenerateRequest) -> list[str]:
    """The family-only keys ``request`` sets: a token-sampling key away from its default, a guidance, a
    model key given (``steps``, ``strength``, ``track`` ...)."""
    out = [k for k in Sampling.TOKEN_KEYS if getattr(request, k) != getattr(DEFAULT_SAMPLING, k)]
    return out + [k for k in ("guidance", *MODEL_KEYS) if getattr(request, k) not in (None, "")]


def check_keys(request: GenerateRequest, family: str, model: str) -> None:
    """Refuse (``unsupported_key``) the keys ``request`` sets that ``family`` lacks; ``model``: the daemon's
    name for the model, for the message."""
    takes = FAMILY_KEYS.get(family)
    if takes is None:
        raise ProtocolError("internal", f"model {model} is of a family stemd has no key table for: {family!r}",
                            request.request_id)
    lacking = [k for k in keys_set(request) if k not in takes]
    if lacking:
        raise ProtocolError("unsupported_key", f"{model} ({family}) has no {', '.join(lacking)}; it takes "
                            + (", ".join(k for k in FAMILY_ONLY if k in takes) if takes else
                               f"none of {', '.join(FAMILY_ONLY)}"), request.request_id)
