"""A take's sidecar: the JSON file beside each take, one schema for every writer, built here.

The daemon builds a take's sidecar (:func:`take_sidecar`) when the take is finished, writes it beside the
take (:func:`encode`: the text) and sends that same text to its client (``/stemd/sidecar <id> <variation>
<json>``, before ``/stemd/take``); ``stemd render`` builds its takes' sidecars here too. A client that
writes the take itself (the bridge, the stemd plugin) writes the daemon's JSON unchanged, adding only its
own fields under one key, ``"delivery"`` (:func:`delivered`); a producer's later word on a take (``accepted``)
goes there too (:func:`mark_delivery`). docs/protocol.md documents the schema.
Core: stdlib only (the bridge runs without torch).
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Optional

from stemd.errors import StemdError
from stemd.protocol import MAX_SIDECAR_BYTES, GenerateRequest

#: the one key a client adds: what it received and wrote, where and when
DELIVERY = "delivery"
#: the largest sidecar the daemon makes: under the protocol's 64 KiB by 1 KiB, so a /stemd/sidecar message
#: (its address, a 128-character id, the variation) fits one UDP datagram
MAX_BYTES = MAX_SIDECAR_BYTES - 1024


class SidecarTooLarge(StemdError):
    """A sidecar over :data:`MAX_BYTES`: a bug (every field it holds is bounded far below)."""

    code = "internal"


def take_sidecar(request: GenerateRequest, variation: int, engine_info: dict, model_name: str = "", *,
                 file: str, sample_rate: int, channels: int, frames: int, format: str,
                 conform: Optional[dict] = None) -> dict:
    """One take's sidecar: when it was made; which model made it (the daemon's name for it, its family,
    its engine's info, licence card, whether its licence allows commercial use, its weights' hash); the
    music (prompt, stem, seed, variation, tempo, meter, bars, the start bar, every request parameter);
    and the take's file (name, rate, channels, frames, format); its guide, when it had one (``guide``: the
    chords text, or the SMF's SHA-256, and a writer that keeps the SMF beside the take adds its ``file``). ``engine_info``: ``Engine.info()``. ``conform``:
    how conform placed this variation on the grid (``BarChunk.conform``), for takes that were conformed."""
    model = engine_info.get("model", "")
    bpm = request.bpm.bpm
    meta = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": model, "model_name": model_name or model, "family": engine_info.get("family", ""),
        "engine": engine_info, "license": engine_info.get("license") or {},
        "prompt": request.prompt, "stem": request.stem, "seed": request.seed, "variation": variation,
        "tempo": float(bpm), "tempo_exact": f"{bpm.numerator}/{bpm.denominator}", "meter": str(request.meter),
        "bars": request.bars, "start_bar": request.start_bar, "request": request.describe(),
        "file": file, "sample_rate": sample_rate, "channels": channels, "frames": frames, "format": format,
    }
    meta["commercial_use"] = bool(meta["license"].get("commercial"))
    if engine_info.get("weights_sha256"):
        meta["weights_sha256"] = engine_info["weights_sha256"]
    if engine_info.get("test_model"):
        meta["note"] = "made by a test model with random weights: noise, not music"
    if conform:
        meta["conform"] = dict(conform)
    if request.chords:
        meta["guide"] = {"chords": request.chords}
    elif request.guide is not None:
        import hashlib

        meta["guide"] = {"smf_sha256": hashlib.sha256(request.guide).hexdigest(), "smf_bytes": len(request.guide)}
    if request.guide_strength is not None:
        meta.setdefault("guide", {})["guide_strength"] = request.guide_strength
    return meta


def encode(meta: dict) -> str:
    """The sidecar's text, as written to its file and sent in ``/stemd/sidecar``: JSON, keys sorted, UTF-8.
    Over :data:`MAX_BYTES` it is refused (:class:`SidecarTooLarge`), never cut."""
    text = json.dumps(meta, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    size = len(text.encode("utf-8"))
    if size > MAX_BYTES:
        raise SidecarTooLarge(f"a take's sidecar would be {size} bytes, over the {MAX_BYTES} stemd makes: a bug in "
                              "stemd, please report it with the request")
    return text


def delivered(received: Optional[str], delivery: dict) -> dict:
    """What a client writes beside a take it wrote: the daemon's sidecar exactly (``received``: the text of
    its ``/stemd/sidecar``), plus ``delivery`` under :data:`DELIVERY`. A sidecar that never arrived (or is
    not a JSON object) is not guessed at: the file holds only the delivery, which says so."""
    delivery = dict(delivery)
    meta: dict = {}
    if received is None:
        delivery["missing"] = "the daemon sent no sidecar for this take: what made it is not known"
    else:
        try:
            meta = json.loads(received)
        except ValueError:
            meta = None
        if not isinstance(meta, dict) or DELIVERY in meta:
            meta = {}
            delivery["missing"] = "the daemon's sidecar for this take was not a stemd sidecar: what made it is not known"
    return {**meta, DELIVERY: delivery}


def mark_delivery(wav: Path, **fields) -> dict:
    """Add ``fields`` under ``delivery`` in the sidecar of the take ``wav`` (``accepted=True`` when a producer
    accepts it), rewritten atomically; returns the new sidecar. A take the daemon wrote in its own ``--out``
    (accepted through its MIDI surface) gets a ``delivery`` holding only these fields. A take with no sidecar
    gets none (nothing to mark)."""
    from stemd.takes import atomic_write

    path = Path(wav).with_suffix(".json")
    if not path.exists():
        return {}
    meta = json.loads(path.read_text(encoding="utf-8"))
    meta[DELIVERY] = {**(meta.get(DELIVERY) or {}), **fields}
    atomic_write(path, encode(meta))
    return meta
