"""What each address does: one table, address -> handler. Handlers never see bytes.

A handler gets the :class:`~stemd.daemon.service.Service`, the client that sent the message (it has
``send(address, *args)``) and the message's arguments. It replies through the client, or raises
:class:`~stemd.protocol.ProtocolError`, which :func:`dispatch` turns into ``/stemd/error``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import stat
from pathlib import Path
from typing import Any, Callable, Optional

from stemd.daemon.takeio import spec_from_request
from stemd.daemon.scheduler import Job
from stemd.daemon.service import Service
from stemd.errors import StemdError
from stemd.families import check_keys
from stemd.midi.session import LEARN_ADDRESS, LEARNED_ADDRESS, LEARNING_ADDRESS
from stemd.osc import Message
from stemd.protocol import (ACCEPTED, CANCEL, ERROR, ERROR_CODES, GENERATE, HELLO, MODELS, MODELS_REPLY, PING, PONG,
                            QUEUED, MAX_CONTINUATION_BYTES, STATUS, STATUS_REPLY, VERSION, GenerateRequest, ProtocolError, check_request_id,
                            random_seed)
from stemd.takes import PathEscape, inside

Handler = Callable[[Service, Any, tuple], None]
#: a continuation file's size on disk at most (the audio it decodes to: MAX_CONTINUATION_BYTES)
MAX_CONTINUATION_FILE = 4 * MAX_CONTINUATION_BYTES


def ping(service: Service, client: Any, args: tuple) -> None:
    info = service.info
    card = info.get("license") or {}
    client.send(PONG, VERSION, str(info.get("model", service.pool.default.name)), str(info.get("device", "cpu")),
                str(info.get("family", "")), str(card.get("name", "")), int(bool(card.get("commercial"))))


def hello(service: Service, client: Any, args: tuple) -> None:
    """``/stemd/hello <token>``: the server checks the token before dispatch; here we only answer."""
    ping(service, client, ())


def generate(service: Service, client: Any, args: tuple) -> None:
    request = GenerateRequest.from_args(args)
    rid = request.request_id
    if (client.key, rid) in service.active:
        raise ProtocolError("duplicate_id", f"request {rid!r} is still running or queued", rid)
    frames = float(request.seconds) * request.sample_rate
    size = frames * request.channels * request.variations * 4
    if size > service.settings.max_take_bytes:
        raise ProtocolError("too_large", f"this take would be {size / 2 ** 20:.0f} MiB of audio; the daemon's limit "
                            f"is {service.settings.max_take_bytes / 2 ** 20:.0f} MiB (fewer bars, variations or a "
                            "lower rate)", rid)
    bar = math.ceil(request.meter.bar_quarters * request.bpm.seconds_per_quarter * request.sample_rate)
    if bar * request.channels * 4 > MAX_CONTINUATION_BYTES:   # one bar is one /stemd/chunk: a packet's limit
        raise ProtocolError("too_large", f"one bar would be {bar * request.channels * 4 / 2 ** 20:.0f} MiB, over "
                            f"the {MAX_CONTINUATION_BYTES // 2 ** 20} MiB a /stemd/chunk may carry (a lower rate "
                            "or a shorter meter)", rid)
    # the model, and whether the request fits its device's memory with it (too_large before any work)
    slot = service.pool.check(request.model, float(request.seconds), request.variations, rid)
    check_keys(request, slot.family, slot.name, slot.holds)     # unsupported_key before any work, loaded or not
    if request.seed is None:  # fixed now, so a preempted take resumes with the same bars (and the sidecar says it)
        request = dataclasses.replace(request, seed=random_seed())
    if request.continuation_path:
        check_continuation_path(request, service.continuation_root(client))
    # the engine's limits (the longest take), known from the checkpoint's files before it loads
    spec = spec_from_request(dataclasses.replace(request, continuation_path=""), slot.engine or slot)
    job = Job(request, client, spec, model=slot.name)

    def accepted() -> None:
        client.send(ACCEPTED, rid)
        ahead = service.scheduler.position(job) + len(service.scheduler.running_jobs())
        if ahead > 0:
            client.send(QUEUED, rid, ahead)

    service.scheduler.submit(job, on_accept=accepted)
    service.register(job)


def check_continuation_path(request: GenerateRequest, root: Optional[Path]) -> Path:
    """The continuation file, checked before accepting: only under ``root`` (``--input-root``; no root, no
    files), a regular file, not too large. Absent and forbidden get the same answer, so a client learns
    nothing about the daemon's disk."""
    rid = request.request_id
    if root is None:
        raise ProtocolError("bad_arguments", "this daemon takes no continuation_path (it was started without "
                            "--input-root): send the audio as a continuation blob", rid)
    refusal = ProtocolError("out_of_range", "continuation_path must name an audio file inside the daemon's "
                            "--input-root", rid)
    try:
        path = inside(root, request.continuation_path)
        st = path.stat()
    except (PathEscape, OSError, RuntimeError, ValueError):   # outside, absent, a loop, a name too long
        raise refusal from None
    if not stat.S_ISREG(st.st_mode):
        raise refusal
    if st.st_size > MAX_CONTINUATION_FILE:
        raise ProtocolError("too_large", f"the continuation file is {st.st_size / 2 ** 20:.0f} MiB; at most "
                            f"{MAX_CONTINUATION_FILE / 2 ** 20:.0f} MiB", rid)
    return path


def cancel(service: Service, client: Any, args: tuple) -> None:
    if len(args) != 1:
        raise ProtocolError("bad_arguments", "cancel takes one argument: <request_id>")
    rid = check_request_id(args[0])
    job = service.active.get((client.key, rid))
    if job is None:
        raise ProtocolError("unknown_request", f"no queued or running request {rid!r} from this client", rid)
    again = bool(job.cancel_reason)
    if service.scheduler.cancel(job, "cancel"):  # still queued: gone now
        service.cancelled(job, "cancel", queued=True)
    elif again:  # running and already told to stop: answered with its status (/stemd/cancelled follows once)
        client.send(STATUS_REPLY, rid, job.state, job.bars_done, job.request.bars, -1)
    # running: the worker stops between steps and sends /stemd/cancelled itself


def status(service: Service, client: Any, args: tuple) -> None:
    if len(args) > 1:
        raise ProtocolError("bad_arguments", "status takes no argument or one: [request_id]")
    if not args:
        running = service.scheduler.running
        state = "stopping" if service.stopping else ("busy" if running else "idle")
        client.send(STATUS_REPLY, "*", state, service.scheduler.queued_count(), running.id if running else "",
                    len(service.clients), str(service.info.get("model", service.pool.default.name)))
        return
    rid = check_request_id(args[0])
    job = service.lookup(client, rid)
    if job is None:
        raise ProtocolError("unknown_request", f"no request {rid!r} from this client", rid)
    where = (job.where,) if job.where else ()    # stemd serve --ray: the replica and node
    client.send(STATUS_REPLY, rid, job.state, job.bars_done, job.request.bars, service.scheduler.position(job), *where)


def models(service: Service, client: Any, args: tuple) -> None:
    """``/stemd/models`` -> ``/stemd/models/reply <count>`` then, per model: name family loaded device dtype
    bytes licence commercial weights_sha256 (the first model is the default; the hash once loaded)."""
    if args:
        raise ProtocolError("bad_arguments", "/stemd/models takes no arguments")
    out: list = []
    described = service.pool.describe()
    for m in described:
        out += [m["name"], m["family"], int(m["loaded"]), m["device"], m["dtype"], int(m["bytes"]), m["license"],
                int(m["commercial"]), m["weights_sha256"]]
    client.send(MODELS_REPLY, len(described), *out)


def midi_learn(service: Service, client: Any, args: tuple) -> None:
    """``/stemd/midi/learn ACTION[:ARG]``: bind the next control that moves on the daemon's controller;
    answered with ``/stemd/midi/learning ACTION[:ARG]`` now and ``/stemd/midi/learned`` once bound."""
    session = service.midi
    if session is None:
        raise ProtocolError("bad_arguments", "this daemon has no MIDI controller: start it with --map FILE")
    if len(args) != 1 or not isinstance(args[0], str):
        raise ProtocolError("bad_arguments", "/stemd/midi/learn takes one string: ACTION[:SLOT|PARAM|BANK]")
    try:
        session.learn(args[0], then=lambda *learned: client.send(LEARNED_ADDRESS, *learned))
    except StemdError as e:
        raise ProtocolError("bad_arguments", str(e)) from None
    client.send(LEARNING_ADDRESS, args[0])


TABLE: dict[str, Handler] = {
    PING: ping,
    HELLO: hello,
    GENERATE: generate,
    CANCEL: cancel,
    STATUS: status,
    MODELS: models,
    LEARN_ADDRESS: midi_learn,
}


def request_id_of(message: Message) -> str:
    """The id to name in an error about ``message`` ("" when it has none we can trust)."""
    if message.address in (GENERATE, CANCEL, STATUS) and message.args and isinstance(message.args[0], str):
        try:
            return check_request_id(message.args[0])
        except ProtocolError:
            return ""
    return ""


def dispatch(service: Service, client: Any, message: Message) -> None:
    """Run ``message``'s handler; every failure becomes ``/stemd/error`` to ``client``."""
    handler = TABLE.get(message.address)
    try:
        if handler is None:
            raise ProtocolError("unknown_address", f"stemd has no address {message.address[:80]!r}; "
                                f"it knows {', '.join(TABLE)}")
        handler(service, client, message.args)
    except StemdError as e:
        rid = getattr(e, "request_id", "") or request_id_of(message)
        code = e.code if e.code in ERROR_CODES else "internal"
        client.send(ERROR, rid, code, str(getattr(e, "message", e)))
    except Exception as e:  # a bug: the client hears about it, the daemon goes on
        logging.getLogger("stemd.daemon").exception("handler for %s failed", message.address)
        client.send(ERROR, request_id_of(message), "internal", f"{type(e).__name__}: {e}"[:300])

