"""Which generate keys each model family takes, and the check that refuses the others before any work.

Most generate keys (prompt, bars, bpm, meter, seed ...) are every model's. The keys below are some
families' only; a request that sets one its model's family lacks is refused with ``unsupported_key``
when it arrives, before ``/stemd/accepted``, whether the model is loaded or not (the daemon knows every
model's family from the start). The engines read the same table when a take starts (:func:`check_spec`), so
an engine used on its own refuses the same keys. docs/protocol.md lists it. Core: no torch.
"""

from __future__ import annotations

from typing import Mapping

from stemd.protocol import MODEL_KEYS, GenerateRequest, ProtocolError
from stemd.sampling import DEFAULT_SAMPLING, Sampling

#: family -> the keys of :data:`FAMILY_ONLY` it takes
FAMILY_KEYS = {
    "click": frozenset(),
    "musicgen": frozenset({"temperature", "top_k", "top_p", "guidance"}),
    "musicgen-melody": frozenset({"temperature", "top_k", "top_p", "guidance", "guide", "chords"}),
    "stable-audio-3": frozenset({"steps", "guidance", "strength", "guide", "chords"}),
    "ace-step": frozenset({"steps", "guidance", "track", "extract", "repaint", "guide", "chords", "guide_strength"}),
}
#: the keys that only some families take
FAMILY_ONLY = (*Sampling.TOKEN_KEYS, "guidance", *MODEL_KEYS)


def keys_given(sampling: Sampling, values: Mapping) -> list[str]:
    """The family-only keys set: a token-sampling key of ``sampling`` away from its default, its guidance
    when given, a model key (``steps``, ``strength``, ``track`` ...) whose value in ``values`` is given."""
    out = sampling.token_keys_given() + (["guidance"] if sampling.guidance is not None else [])
    return out + [k for k in MODEL_KEYS if values.get(k) not in (None, "")]


def keys_set(request: GenerateRequest) -> list[str]:
    """The family-only keys ``request`` sets."""
    return keys_given(request.sampling, {k: getattr(request, k) for k in MODEL_KEYS})


def refuse_lacking(keys: list[str], family: str, model: str, request_id: str = "") -> None:
    """Refuse (``unsupported_key``) the ``keys`` that ``family`` lacks; ``model``: the daemon's name for the
    model, for the message."""
    takes = FAMILY_KEYS.get(family)
    if takes is None:
        raise ProtocolError("internal", f"model {model} is of a family stemd has no key table for: {family!r}",
                            request_id)
    lacking = [k for k in keys if k not in takes]
    if lacking:
        raise ProtocolError("unsupported_key", f"{model} ({family}) has no {', '.join(lacking)}; it takes "
                            + (", ".join(k for k in FAMILY_ONLY if k in takes) if takes else
                               f"none of {', '.join(FAMILY_ONLY)}"), request_id)


def check_keys(request: GenerateRequest, family: str, model: str) -> None:
    """What the daemon's dispatch and ``stemd render`` ask before any work: :func:`refuse_lacking` for the keys
    ``request`` sets."""
    refuse_lacking(keys_set(request), family, model, request.request_id)


def check_spec(spec, family: str, model: str) -> None:
    """What an engine asks when it starts a take (``spec``: a ``stemd.models.base.GenerationSpec``, whose
    ``extra`` holds the model keys): the same table, so an engine used without the daemon refuses the same keys."""
    refuse_lacking(keys_given(spec.sampling, spec.extra), family, model)
