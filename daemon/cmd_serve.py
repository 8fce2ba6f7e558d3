"""``stemd serve``: keep models warm and serve every DAW, bridge and controller over OSC (UDP + TCP)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from stemd.models.registry import DECODE_BACKENDS
from stemd.protocol import DEFAULT_PORT

MIN_TOKEN_CHARS = 16


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", action="append", default=[], metavar="[NAME=]SOURCE",
                   help="a model to serve, repeatable: 'click' (a metronome, no model), a hub id (facebook/musicgen-small, "
                        "stabilityai/stable-audio-3-small-music, ACE-Step/...) or a local checkpoint folder (MusicGen, or "
                        "a diffusers pipeline: Stable Audio 3, ACE-Step 1.5); NAME= names it for requests' model key "
                        "(default: the folder's or repo's name). The first is the default; it loads at start, the "
                        "others on first use (default: facebook/musicgen-small)")
    p.add_argument("--models", default=None, metavar="FILE",
                   help="models from a TOML file: [models] NAME = \"SOURCE\" or NAME = { source, device, dtype, "
                        "backend } (before any --model; see docs/models.md)")
    p.add_argument("--memory-budget", type=float, default=None, metavar="GB",
                   help="memory the models and their requests may use on each device, in GiB (default: what the "
                        "device has free at start, less max(1 GiB, 10%%; 20%% on a CPU)); the least recently used "
                        "model is evicted when another needs room")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; any other address requires --token)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"UDP and TCP port (default {DEFAULT_PORT}; 0 picks a free one and logs it)")
    p.add_argument("--token", default=os.environ.get("STEMD_TOKEN", ""),
                   help=f"shared secret clients must present, at least {MIN_TOKEN_CHARS} characters (default: "
                        "$STEMD_TOKEN; prefer it or --token-file: a --token is visible in the process list)")
    p.add_argument("--token-file", default=None, help="read the token from this file (its first line)")
    p.add_argument("--out", default="takes", help="folder for finished takes (default ./takes)")
    p.add_argument("--device", action="append", default=[],
                   help="cuda, cuda:1, mps or cpu, repeatable: one worker per device, a model's requests go to the "
                        "device that holds it (default: the best available)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: by device), for every model "
                                                 "that does not name its own")
    p.add_argument("--backend", default=None, choices=DECODE_BACKENDS,   # None: registry.chosen_backend's
                   help="MusicGen decoding backend (default: $STEMD_DECODE_BACKEND, else auto); auto picks "
                        "cuda-graph on CUDA and, on a CPU, the fastest of onnx, onnx-int8, eager and int8 measured "
                        "(int8 paths are not exact: docs/backends.md)")
    p.add_argument("--queue-size", type=int, default=16, help="requests that may wait (default 16); more get 'busy'")
    p.add_argument("--on-shutdown", choices=["finish", "cancel"], default="cancel",
                   help="on SIGINT/SIGTERM: finish queued and running requests, or cancel them (default)")
    p.add_argument("--max-clients", type=int, default=64, help="TCP connections at once (default 64); more get 'busy'")
    p.add_argument("--max-client-buffer-mb", type=float, default=64.0,
                   help="replies waiting for a TCP client that stopped reading before it is dropped (default 64)")
    p.add_argument("--stall-seconds", type=float, default=30.0,
                   help="drop a TCP client that has taken none of its waiting replies for this long (default 30)")
    p.add_argument("--max-total-buffer-mb", type=float, default=256.0,
                   help="replies waiting for all TCP clients together (default 256); past it, non-reading "
                        "clients are dropped")
    p.add_argument("--max-take-mb", type=float, default=256.0,
                   help="the largest take accepted, all variations together (default 256: 8 bars at 120 BPM and "
                        "48 kHz stereo are 6 MiB; takes stream to disk bar by bar)")
    p.add_argument("--input-root", default=None,
                   help="allow continuation_path: audio files in this folder only (default: no continuation_path "
                        "from clients)")
    p.add_argument("--pace", type=float, default=0.0,
                   help="spend at least this many seconds per bar (demos and tests: a fast engine that behaves "
                        "like a slow one)")
    p.add_argument("--soundfont", default=None, metavar="SF2",
                   help="the General MIDI soundfont guides are rendered with (default: $STEMD_SOUNDFONT, else Debian's "
                        "/usr/share/sounds/sf2/FluidR3_GM.sf2); checked at start")
    p.add_argument("--ray", default=None, metavar="ADDRESS|auto",
                   help="run the work on a Ray cluster (its head's host:port, or auto): this process keeps the OSC "
                        "server and the queue, a Ray Serve deployment holds one worker replica per GPU (see "
                        "docs/cluster.md; needs pip install 'stemd[cluster]')")
    p.add_argument("--ray-replicas", default=None, metavar="N|MIN:MAX",
                   help="--ray: worker replicas (default: one per GPU of the cluster, or 1 without GPUs); MIN:MAX: "
                        "Serve adds replicas while requests wait, up to MAX, and keeps MIN warm")
    p.add_argument("--ray-app", default="stemd", metavar="NAME",
                   help="--ray: the Serve application that holds the replicas (default stemd; a front door that "
                        "starts replaces its application's replicas: give each front door of one cluster its own)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--map", default=None,
                   help="a MIDI controller map: a controller on this machine drives the daemon directly, takes go "
                        "to --out (see docs/midi.md)")
    p.add_argument("--audition-device", default=None,
                   help="--map: the audio output auditions play on (name or index; default: the system's)")
    from stemd import midi  # light: imports neither mido nor rtmidi

    midi.add_arguments(p, input_help="--map: the controller's MIDI output to read, by name or substring (overrides "
                                     "the map's device.input; default: a port of our own, stemd-serve-midi-in:in)")


def run(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from stemd.cli import CommandError
    from stemd.daemon.server import Server, loopback
    from stemd.daemon.service import Service, Settings
    from stemd.models.memory import gib

    if args.token_file:
        try:
            args.token = Path(args.token_file).expanduser().read_text().splitlines()[0].strip()
        except (OSError, IndexError, UnicodeDecodeError) as e:
            raise CommandError(f"cannot read a token from {args.token_file}: {getattr(e, 'strerror', None) or e}") \
                from None
    if args.token and len(args.token) < MIN_TOKEN_CHARS:
        raise CommandError(f"the token must be at least {MIN_TOKEN_CHARS} characters (try: python3 -c "
                           "\"import secrets; print(secrets.token_urlsafe(24))\")")
    if not loopback(args.host) and not args.token:
        raise CommandError(f"listening on {args.host} (not this machine only) requires --token")
    if not 0 <= args.port <= 65535:
        raise CommandError(f"--port must be 0..65535, got {args.port}")
    if args.soundfont:
        from stemd.models.guide_audio import GuideAudioError, set_soundfont

        try:
            set_soundfont(Path(args.soundfont).expanduser())
        except GuideAudioError as e:
            raise CommandError(str(e)) from None
    if args.queue_size < 1:
        raise CommandError("--queue-size must be at least 1")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    log = logging.getLogger("stemd.daemon")
    midimap = None
    if args.map:  # a mistake in the map is reported before the model loads
        from stemd import midi

        midimap = midi.load_map(args)
    elif args.learn or args.controller or args.controller_out:
        raise CommandError("--learn, --controller and --controller-out need --map FILE")

    pool = model_pool(args)  # ModelNotFound, a bad models file: one line, exit 2
    out = Path(args.out).expanduser().resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".stemd-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise CommandError(f"cannot write takes to {out}: {e.strerror or e}") from None
    from stemd.takes import remove_leftovers

    left = remove_leftovers(out)   # what a daemon killed mid-take left: partial files, unfinished claims
    if left:
        log.info("removed %d leftovers of unfinished takes in %s: %s", len(left), out,
                 ", ".join(p.name for p in left[:5]) + (" ..." if len(left) > 5 else ""))
    settings = Settings(out=out, token=args.token, queue_size=args.queue_size, on_shutdown=args.on_shutdown,
                        max_client_buffer=int(args.max_client_buffer_mb * 2 ** 20),
                        max_take_bytes=int(args.max_take_mb * 2 ** 20),
                        input_root=Path(args.input_root).resolve() if args.input_root else None, pace=args.pace,
                        max_clients=args.max_clients, stall_seconds=args.stall_seconds,
                        max_total_buffer=int(args.max_total_buffer_mb * 2 ** 20))
    if args.ray:
        service, cluster = cluster_service(args, pool, settings)   # the models load on the replicas
    else:
        warm(pool)
        service, cluster = Service(pool, settings), None
    server = Server(service)

    async def main() -> None:
        try:
            await server.start(args.host, args.port)
        except OSError as e:
            raise CommandError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
        session = open_controller(server, midimap, args) if midimap is not None else None  # PortMissing: exit 2
        port = session.input if session else None
        controller = f"; MIDI controller {port.connected_to or f'{port.client_name}:{port.virtual}'}" if port else ""
        for slot in pool.slots.values():
            card = slot.license
            if card and not card.get("commercial"):
                log.warning("model %s: its weights are licensed %s, which does not allow commercial use: takes made "
                            "with it may not be released or sold (%s)", slot.name, card["name"], card.get("link", ""))
        models = ", ".join(f"{s.name} ({s.family}{', loaded' if s.loaded else ''})" for s in pool.slots.values())
        budgets = ", ".join(f"{d} {gib(b)}" for d, b in pool.budgets.items())
        info = server.service.info
        where = f"[{args.host}]" if ":" in args.host else args.host
        log.info("listening on osc.udp://%s:%d and osc.tcp://%s:%d; model %s (%s) on %s; takes in %s%s%s",
                 where, server.port, where, server.port, info.get("model", pool.default.name), info.get("family", "?"),
                 info.get("device", "cpu"), out, "; token required" if args.token else "", controller)
        log.info("models: %s (the first is the default); memory budget per device: %s", models, budgets)
        try:
            await server.run_until_signal()
        finally:
            if session is not None:
                session.close()

    try:
        asyncio.run(main())
    finally:
        if cluster is not None:
            cluster.close()
    return 0


def cluster_service(args: argparse.Namespace, pool, settings):
    """``--ray``: the service whose scheduler dispatches to the cluster's replicas (Ray imported here only)."""
    from stemd.cli import CommandError
    from stemd.daemon.service import Service

    if args.map:
        raise CommandError("--map is not served with --ray yet: run the controller with stemd bridge")
    try:
        from stemd.daemon.cluster.frontdoor import Cluster, ClusterError, attach, parse_replicas
    except ImportError as e:
        raise CommandError(f"--ray needs Ray Serve: pip install 'stemd[cluster]' ({e})") from None
    try:
        cluster = Cluster(args.ray, model_entries(args), replicas=parse_replicas(args.ray_replicas),
                          app=args.ray_app, memory_budget=args.memory_budget, pace=args.pace)
    except ClusterError as e:
        raise CommandError(str(e)) from None
    except Exception as e:   # JobError from the reachability check, Serve's own failures
        raise CommandError(f"cannot start the workers on the Ray cluster at {args.ray}: {e}") from None
    service = Service(pool, settings)
    attach(service, cluster)
    return service, cluster


def model_entries(args: argparse.Namespace) -> list:
    """The models to serve, in order: the models file's, then each --model (default: musicgen-small);
    the command line's --dtype and --backend fill what an entry leaves unsaid."""
    import dataclasses

    from stemd.models.pool import parse_model_arg, read_models_file

    entries = read_models_file(Path(args.models)) if args.models else []
    entries += [parse_model_arg(m) for m in args.model]
    if not entries:
        entries = [parse_model_arg("facebook/musicgen-small")]
    return [dataclasses.replace(e, dtype=e.dtype or args.dtype, backend=e.backend or args.backend) for e in entries]


def warm(pool) -> None:
    """Before the daemon listens: the default model loaded, and, when any model it serves is conformed
    (all but click), what conform runs on imported (scipy.signal alone: ~1.3 s), not in a first take's bar 1."""
    pool.preload()
    if any(slot.family != "click" for slot in pool.slots.values()):
        from stemd.models.pipeline import warm_conform

        warm_conform()


def model_pool(args: argparse.Namespace):
    """The pool of every model to serve, found on disk (not loaded), with each device's budget."""
    from stemd.cli import CommandError
    from stemd.models.pool import ModelPool, default_budget, device_type, resolve_devices

    entries = model_entries(args)
    devices = resolve_devices(args.device, [e.source for e in entries])
    if args.memory_budget is not None and not args.memory_budget > 0:
        raise CommandError("--memory-budget must be a number of GiB above 0")
    cpus = sum(device_type(d) == "cpu" for d in devices)
    budgets = {d: int(args.memory_budget * 2 ** 30) if args.memory_budget else
               default_budget(d, cpus if device_type(d) == "cpu" else 1) for d in devices}
    return ModelPool(entries, devices, budgets)


def open_controller(server, midimap, args: argparse.Namespace):
    """The controller's MIDI session, driving the daemon through a :class:`~stemd.daemon.midi.DaemonTarget`."""
    from stemd import midi
    from stemd.daemon.midi import DaemonTarget

    target = DaemonTarget(server.call_on_loop, server.service, args.audition_device)
    session = midi.open_session(midimap, target, args, client_name="stemd-serve", who="stemd serve")
    target.on_state = lambda take_id, state: session.take_state(take_id, midi.STATE_LIGHT.get(state, ""))
    server.service.midi = session
    return session
