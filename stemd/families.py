"""Which generate keys each model family takes, and the check that refuses the others before any work.

Most generate keys (prompt, bars, bpm, meter, seed ...) are every model's. The keys below are some
families' only; a request that sets one its model's family lacks is refused with ``unsupported_key``
when it arrives, before ``/stemd/accepted``, whether the model is loaded or not (the daemon knows every
model's family from the start). The engines read the same table when a take starts (:func:`check_spec`), so
an engine used on its own refuses the same keys. docs/protocol.md lists it.

Some tasks need a part that only some checkpoints of a family hold (ACE-Step's cover of a guide needs its audio
tokenizer and detokenizer, which a checkpoint may leave out): :data:`NEEDS`. The daemon reads what each
checkpoint holds when it locates the model (``model_index.json``: models/diffusion/loading.py, no weights loaded)
and refuses such a request the same way, before ``/stemd/accepted``; the engine checks the parts it loaded.
Keys a family takes that make no task together (two of ACE-Step's tasks, a task without its audio, a guide with
given audio ...) are ``bad_arguments`` at the same two places (:func:`refuse_clashes`). Core: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Collection, Mapping, Optional

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


@dataclass(frozen=True)
class Need:
    """A task of ``family`` that needs ``parts`` (a checkpoint's components) beyond what every checkpoint of
    the family holds: asked for when ``asks(keys set)``; ``instead``: what a producer can ask for without them."""

    family: str
    task: str
    asks: Callable[[frozenset], bool]
    parts: tuple[str, ...]
    instead: str


#: the tasks some checkpoints of a family cannot do
NEEDS = (
    Need("ace-step", "a cover of a guide", lambda keys: bool(keys & {"guide", "chords"}) and "track" not in keys,
         ("audio_tokenizer", "audio_token_detokenizer"), "give track NAME with the guide (the lego task) instead"),
)


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


def refuse_missing(keys: list[str], family: str, model: str, holds: Optional[Collection[str]],
                   request_id: str = "") -> None:
    """Refuse (``unsupported_key``) a task of :data:`NEEDS` that ``keys`` ask for and the checkpoint lacks a part
    of; ``holds``: the parts the checkpoint holds (None: whatever its family may need)."""
    if holds is None:
        return
    asked = frozenset(keys)
    for need in NEEDS:
        missing = [part for part in need.parts if part not in holds]
        if need.family == family and missing and need.asks(asked):
            raise ProtocolError("unsupported_key", f"{model} ({family}) has no {', '.join(missing)}, which "
                                f"{need.task} needs: {need.instead}", request_id)


def refuse_clashes(keys: list[str], family: str, given_audio: bool, request_id: str = "") -> None:
    """Refuse (``bad_arguments``) keys of ``family`` that make no task together, or a task without the audio it
    works on (``given_audio``: a continuation blob or path)."""
    def refuse(message: str):
        raise ProtocolError("bad_arguments", message, request_id)

    asked, guide = set(keys), bool(set(keys) & {"guide", "chords"})
    if guide and given_audio:
        refuse("a melody model follows a guide from the take's first bar: send the guide without continuation or "
               "continuation_path" if family == "musicgen-melody" else
               "a guide is the audio the take is made from: send it without continuation or continuation_path")
    if family == "ace-step":
        tasks = [k for k in ("track", "extract", "repaint") if k in asked]
        on_audio = [k for k in tasks if k != "track"]
        if guide and on_audio:
            refuse(f"{on_audio[0]} works on given audio, not on a guide: ask for a cover (no task key) or track NAME "
                   "with a guide")
        if guide and tasks and "guide_strength" in asked:
            refuse("guide_strength is a cover's: track NAME with a guide is the lego task, which has none")
        if not guide and "guide_strength" in asked:
            refuse("guide_strength is how closely a cover follows its guide: give chords or a guide")
        if len(tasks) > 1:
            refuse(f"{' and '.join(tasks)} are different tasks: ask for one")
        if tasks and not guide and not given_audio:
            refuse(f"{tasks[0]} works on given audio: send it as continuation or continuation_path")
    if family == "stable-audio-3" and "strength" in asked and not guide and not given_audio:
        refuse("strength makes a variation of given audio: send it as continuation or continuation_path")


def check_keys(request: GenerateRequest, family: str, model: str,
               holds: Optional[Collection[str]] = None) -> None:
    """What the daemon's dispatch and ``stemd render`` ask before any work: :func:`refuse_lacking`,
    :func:`refuse_clashes` and :func:`refuse_missing` for the keys ``request`` sets."""
    keys, rid = keys_set(request), request.request_id
    refuse_lacking(keys, family, model, rid)
    refuse_clashes(keys, family, request.continuation is not None or bool(request.continuation_path), rid)
    refuse_missing(keys, family, model, holds, rid)


def check_spec(spec, family: str, model: str, holds: Optional[Collection[str]] = None) -> None:
    """What an engine asks when it starts a take (``spec``: a ``stemd.models.base.GenerationSpec``, whose
    ``extra`` holds the model keys): the same tables, so an engine used without the daemon refuses the same keys;
    ``holds``: the parts the engine loaded."""
    keys = keys_given(spec.sampling, spec.extra)
    refuse_lacking(keys, family, model)
    refuse_clashes(keys, family, spec.continuation is not None)
    refuse_missing(keys, family, model, holds)
