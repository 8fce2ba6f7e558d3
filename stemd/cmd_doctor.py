"""``stemd doctor``: what a user needs to know when something does not work.

Each check prints one line: ``ok``, ``warn`` or ``fail``, what was checked and what was found (and,
where something is missing, the command that fixes it). Heavy packages are imported only to look.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import socket
import sys
from pathlib import Path
from typing import Callable

from stemd.protocol import DEFAULT_PORT, VERSION

Check = tuple[str, str, str]  # (status, what, detail)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="the daemon's port to check")
    p.add_argument("--json", action="store_true", help="print the checks as JSON")
    p.add_argument("--model", action="append", default=[], metavar="[NAME=]SOURCE",
                   help="check a model stemd serve would serve (repeatable, as stemd serve takes it)")
    p.add_argument("--models", default=None, metavar="FILE", help="check every model of a stemd serve models file")


def hf_cache_dir() -> Path:
    """Where the Hugging Face hub cache lives, honouring HF_HUB_CACHE / HUGGINGFACE_HUB_CACHE / HF_HOME."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


#: hub-cache folder patterns of the model families stemd serves -> (family, the file a complete snapshot has)
FAMILY_PATTERNS = (("models--*--*musicgen*", "musicgen", "config.json"),
                   ("models--stabilityai--stable-audio-3*", "stable-audio-3", "model_index.json"),
                   ("models--ACE-Step--*", "ace-step", "model_index.json"))


def cached_models(cache: Path) -> list[str]:
    """``repo (licence; commercial use yes/NO)`` for every snapshot of a family stemd serves in ``cache``."""
    from stemd.licenses import card

    if not cache.is_dir():
        return []
    names = []
    for pattern, family, marker in FAMILY_PATTERNS:
        for entry in sorted(cache.glob(pattern)):
            repo = entry.name[len("models--"):].replace("--", "/", 1)
            complete = any(entry.glob(f"snapshots/*/{marker}"))
            lic = card(family)
            terms = f"{lic['name']}; commercial use {'yes' if lic['commercial'] else 'NO'}"
            names.append(f"{repo} ({terms})" if complete else f"{repo} (incomplete)")
    return names


def check_python() -> list[Check]:
    ok = sys.version_info >= (3, 10)
    return [("ok" if ok else "fail", "python", f"{platform.python_version()} at {sys.executable}"),
            ("ok", "stemd", VERSION)]


def check_torch() -> list[Check]:
    try:
        torch = importlib.import_module("torch")
    except Exception as e:  # any import failure means: no daemon side here
        return [("warn", "torch", f"not importable ({e.__class__.__name__}); the bridge works without it, "
                 "the daemon needs it: pip install -e '.[daemon]' -c constraints.txt")]
    out: list[Check] = [("ok", "torch", torch.__version__)]
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        out.append(("ok", "device", f"cuda ({names}); bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}"))
    elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        out.append(("ok", "device", "mps (Apple GPU)"))
    else:
        cuda_build = torch.version.cuda or "none (CPU build)"
        out.append(("warn", "device", f"cpu only; torch CUDA build: {cuda_build}. For a GPU see README.md"))
    return out


def check_models() -> list[Check]:
    cache = hf_cache_dir()
    models = cached_models(cache)
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    status = "ok" if models else "warn"
    detail = ", ".join(models) if models else ("none; fetch one with: stemd pull ACE-Step/<a diffusers-format repo> "
                                               "(MIT), or stemd pull facebook/musicgen-small (non-commercial); or "
                                               "use --model click, or stemd make-test-model DIR")
    out = [(status, "models", f"{detail} [cache: {cache}{', HF_HUB_OFFLINE=1' if offline else ''}]")]
    try:
        diffusers = importlib.import_module("diffusers")
        out.append(("ok", "diffusers", f"{diffusers.__version__} (Stable Audio 3, ACE-Step 1.5)"))
    except Exception as e:  # any import failure: the diffusion families are unavailable here
        out.append(("warn", "diffusers", f"not importable ({e.__class__.__name__}): Stable Audio 3 and ACE-Step need "
                    "it: pip install -e '.[daemon]' -c constraints.txt"))
    return out


def check_midi() -> list[Check]:
    from stemd.midi.ports import quiet_native_stderr

    with quiet_native_stderr():
        return _check_midi()


def _check_midi() -> list[Check]:
    try:
        rtmidi = importlib.import_module("rtmidi")
    except Exception as e:
        return [("fail", "midi", f"python-rtmidi not importable: {e}")]
    out: list[Check] = []
    apis = rtmidi.get_compiled_api()
    names = [rtmidi.get_api_display_name(a) for a in apis]
    out.append(("ok" if apis else "fail", "midi backends", ", ".join(names) or "none compiled in"))
    for api in apis:
        if api == rtmidi.API_RTMIDI_DUMMY:
            continue
        try:
            ins = rtmidi.MidiIn(api).get_ports()
            outs = rtmidi.MidiOut(api).get_ports()
            out.append(("ok", f"midi ports ({rtmidi.get_api_display_name(api)})",
                        f"in: {ins or 'none'}; out: {outs or 'none'}"))
        except Exception as e:  # a backend without a server (JACK not running) raises here
            out.append(("warn", f"midi ports ({rtmidi.get_api_display_name(api)})", f"unavailable: {e}"))
    return out


def check_audio() -> list[Check]:
    from stemd.midi.ports import quiet_native_stderr

    with quiet_native_stderr():
        return _check_audio()


def _check_audio() -> list[Check]:
    try:
        sd = importlib.import_module("sounddevice")
    except OSError as e:
        return [("warn", "audio", f"PortAudio missing ({e}); live playback needs it: apt-get install libportaudio2")]
    except Exception as e:
        return [("warn", "audio", f"sounddevice not importable: {e}")]
    try:
        outputs = [d["name"] for d in sd.query_devices() if d["max_output_channels"] > 0]
    except Exception as e:
        return [("warn", "audio", f"cannot list devices: {e}")]
    return [("ok" if outputs else "warn", "audio outputs", ", ".join(outputs) or "none found")]


def check_chromium() -> list[Check]:
    """stemd render draws contact.png with headless Chromium; without one only the HTML sheet is written."""
    from stemd.chromium import find_chromium

    path = find_chromium()
    if path:
        return [("ok", "chromium", f"{path} (stemd render's contact.png)")]
    return [("warn", "chromium", "not found: stemd render writes contact.html but no contact.png (Debian: "
             "apt-get install chromium)")]


def check_port(port: int) -> list[Check]:
    busy = []
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                busy.append("TCP" if kind == socket.SOCK_STREAM else "UDP")
    if busy:
        return [("warn", "daemon port", f"{port} is in use ({'/'.join(busy)}): a daemon may already run there, "
                 f"or pick another with stemd serve --port")]
    return [("ok", "daemon port", f"{port} is free on 127.0.0.1 (TCP and UDP)")]


def check_served(model_args: list, models_file) -> list[Check]:
    """Each model a daemon would serve: found or not, its family, weights estimate and licence (nothing loads)."""
    if not model_args and not models_file:
        return []
    try:
        from stemd.models.memory import gib
        from stemd.models.entries import parse_model_arg, read_models_file
        from stemd.models.pool import locate_slot
    except ImportError as e:   # the bridge-only install
        return [("fail", "served models", f"cannot check models without the daemon's packages ({e})")]
    from stemd.errors import StemdError

    out: list[Check] = []
    try:
        entries = (read_models_file(Path(models_file)) if models_file else []) + [parse_model_arg(m) for m in
                                                                                 model_args]
    except StemdError as e:
        return [("fail", "served models", str(e))]
    for entry in entries:
        try:
            slot = locate_slot(entry, "cpu")     # what stemd serve would know of it, nothing loaded
        except StemdError as e:
            out.append(("fail", f"model {entry.name}", str(e)))
            continue
        if slot.folder is None:
            out.append(("ok", f"model {entry.name}", "click (a metronome, no weights)"))
            continue
        fp, lic = slot.footprint, slot.license
        test = " (a test model: random weights, noise)" if slot.test_model else ""
        out.append(("ok", f"model {entry.name}", f"{slot.family} at {slot.folder}{test}; weights about "
                    f"{gib(fp.weights)} in {slot.dtype} on {entry.device or 'cpu'}, a 4-bar 120 BPM request about "
                    f"{gib(fp.request(8.0, 1))} more; {lic['name']}, commercial use "
                    f"{'yes' if lic['commercial'] else 'NO'}"))
    return out


def run(args: argparse.Namespace) -> int:
    checks: list[Callable[[], list[Check]]] = [check_python, check_torch, check_models,
                                               lambda: check_served(args.model, args.models), check_midi,
                                               check_audio, check_chromium, lambda: check_port(args.port)]
    results: list[Check] = []
    for check in checks:
        try:
            results += check()
        except Exception as e:  # a check that breaks must not hide the others
            results.append(("fail", getattr(check, "__name__", "check"), f"{e.__class__.__name__}: {e}"))
    if args.json:
        print(json.dumps([{"status": s, "check": w, "detail": d} for s, w, d in results], indent=2))
    else:
        for status, what, detail in results:
            print(f"{status:<5} {what:<22} {detail}")
    return 1 if any(s == "fail" for s, _w, _d in results) else 0
