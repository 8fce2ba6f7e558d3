"""Takes on disk: names a producer can find, WAV files written atomically, JSON sidecars.

Both sides write takes (the daemon for UDP clients and offline renders, the bridge into the DAW's
project folder), so this lives in the core with only the standard library and numpy. A take is
written to ``NAME.partial`` and renamed into place, sidecar first, so a half-written file is never
mistaken for a finished take.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import struct
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from stemd.errors import StemdError

WAVE_FORMAT_PCM, WAVE_FORMAT_IEEE_FLOAT = 1, 3
SUBTYPES = ("float32", "pcm24", "pcm16")


class PathEscape(ValueError):
    """An output path that would leave its folder."""

    code = "out_of_range"


def slug(text: str, words: int = 5, max_chars: int = 40) -> str:
    """'Dusty lo-fi drums, 90 BPM!' -> 'dusty-lo-fi-drums-90'."""
    parts = re.findall(r"[a-z0-9]+", text.lower())[:words]
    return "-".join(parts)[:max_chars].strip("-") or "take"


def step_variation(take_id: str, state: str, count: int, chosen: int, step: int) -> int:
    """The variation ``step`` places from ``chosen`` among ``count`` files, wrapping around (bridge and
    daemon alike). A take with no files yet, or accepted with several, has nothing to choose."""
    if not count:
        raise StemdError(f"take {take_id} has no variations to choose from yet (it is {state})", "bad_arguments")
    if state == "accepted" and count > 1:
        raise StemdError(f"take {take_id} is accepted as variation {chosen + 1}: re-roll it to choose again",
                         "bad_arguments")
    return (chosen + step) % count


def take_prefix(prompt: str, bar: int, stem: str = "") -> str:
    """``[<stem>_]<prompt words>_bar<DAW bar, from 1>``: what every take of one request starts with."""
    words = slug(prompt)
    if stem:
        stem = slug(stem, words=3, max_chars=20)
        words = words if words == stem or words.startswith(stem + "-") else f"{stem}_{words}"
    return f"{words}_bar{bar + 1:03d}"


def take_name(prompt: str, bar: int, take: int, variation: Optional[int] = None, stem: str = "") -> str:
    """``[<stem>_]<prompt words>_bar<DAW bar, from 1>_take<n>[_v<variation>]`` (no extension)."""
    name = f"{take_prefix(prompt, bar, stem)}_take{take:02d}"
    return name if variation is None else f"{name}_v{variation + 1}"


def inside(folder: Path, name: str) -> Path:
    """``folder/name``, refusing any name that would escape ``folder`` (.., absolute, links)."""
    folder = Path(folder).resolve()
    target = (folder / name).resolve()
    if target != folder and folder not in target.parents:
        raise PathEscape(f"{name!r} is outside the output folder {folder}")
    return target


def next_take_number(folder: Path, stem_prefix: str) -> int:
    """1 + the highest take number already in ``folder`` for names starting with ``stem_prefix``."""
    highest = 0
    if Path(folder).is_dir():
        for path in Path(folder).iterdir():
            m = re.match(re.escape(stem_prefix) + r"_take(\d+)", path.name)
            if m:
                highest = max(highest, int(m.group(1)))
    return highest + 1


def wav_bytes(audio: np.ndarray, sample_rate: int, subtype: str = "float32") -> bytes:
    """A RIFF/WAVE file of ``audio`` float32 ``(channels, n)``: float32, 24- or 16-bit PCM."""
    if subtype not in SUBTYPES:
        raise ValueError(f"subtype must be one of {SUBTYPES}")
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None, :]
    channels, frames = audio.shape
    interleaved = audio.T
    if subtype == "float32":
        fmt, bits, data = WAVE_FORMAT_IEEE_FLOAT, 32, np.ascontiguousarray(interleaved, "<f4").tobytes()
    elif subtype == "pcm24":
        ints = np.round(np.clip(interleaved, -1.0, 1.0 - 2 ** -23) * 2 ** 23).astype("<i4").tobytes()
        # little-endian int32 -> the low three bytes of each sample
        fmt, bits, data = WAVE_FORMAT_PCM, 24, np.frombuffer(ints, np.uint8).reshape(-1, 4)[:, :3].tobytes()
    else:
        ints = np.round(np.clip(interleaved, -1.0, 1.0 - 2 ** -15) * 2 ** 15).astype("<i2")
        fmt, bits, data = WAVE_FORMAT_PCM, 16, ints.tobytes()
    return wav_header(channels, sample_rate, frames, fmt, bits) + data + (b"\0" if len(data) % 2 else b"")


def wav_header(channels: int, sample_rate: int, frames: int, fmt: int = WAVE_FORMAT_IEEE_FLOAT,
               bits: int = 32) -> bytes:
    """Everything of a RIFF/WAVE file before its sample data, for ``frames`` frames."""
    block = channels * bits // 8
    size = frames * block
    fmt_chunk = struct.pack("<HHIIHH", fmt, channels, sample_rate, sample_rate * block, block, bits)
    chunks = b"fmt " + struct.pack("<I", len(fmt_chunk)) + fmt_chunk
    if fmt == WAVE_FORMAT_IEEE_FLOAT:  # non-PCM formats carry a fact chunk
        chunks += b"fact" + struct.pack("<II", 4, frames)
    chunks += b"data" + struct.pack("<I", size)
    return b"RIFF" + struct.pack("<I", 4 + len(chunks) + size + size % 2) + b"WAVE" + chunks


PARTIAL = ".partial"  # a file being written: renamed into place when whole


def file_sha256(path: Union[str, Path]) -> str:
    """SHA-256 of a file's bytes, read in 4 MiB blocks (takes, exports and weights are hashed alike)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


class PartialFile:
    """A file written under a partial name of its own (``NAME.<pid>-<random>.partial``, so two writers never
    share one) and published whole: ``publish`` syncs it and gives it its final name, ``discard`` removes
    it. ``replace`` False publishes with a link that never replaces an existing file (``FileExistsError``):
    what a take needs, whose final name may be another writer's. A take stream keeps one open while its
    bars arrive; :func:`atomic_write` is one written at once."""

    def __init__(self, path: Union[str, Path], *, replace: bool = True):
        self.path, self.replace = Path(path), replace
        self.partial = partial_name(self.path)
        self.file = open(self.partial, "wb")

    def write(self, data: bytes) -> None:
        self.file.write(data)

    def publish(self) -> Path:
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            if self.replace:
                os.replace(self.partial, self.path)
            else:
                os.link(self.partial, self.path)
                os.unlink(self.partial)
        except BaseException:
            self.discard()
            raise
        return self.path

    def discard(self) -> None:
        try:
            self.file.close()       # (on a full disk closing fails to write what it buffers: closed anyway)
        finally:
            self.partial.unlink(missing_ok=True)


def atomic_write(path: Union[str, Path], data: Union[bytes, str], *, replace: bool = True) -> None:
    """``data`` (text is UTF-8) into ``path`` through a :class:`PartialFile`: whole or not there; with
    ``replace`` False never over an existing file (``FileExistsError``). The one atomic writer: takes,
    sidecars, the take history, Ardour sessions, MIDI maps and kept verdicts go through it."""
    out = PartialFile(path, replace=replace)
    try:
        out.write(data.encode() if isinstance(data, str) else data)
    except BaseException:
        out.discard()
        raise
    out.publish()


def partial_name(path: Path) -> Path:
    """``NAME.<pid>-<random>.partial``: one writer's own, and whose (``remove_leftovers``)."""
    return path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(4)}{PARTIAL}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0
    return True


_LEFTOVER = re.compile(r"\.(\d+)-[0-9a-f]{8}" + re.escape(PARTIAL) + r"$")
_CLAIM = ".claim"
_TAKE_NUMBER = re.compile(r"([^.].*)_take(\d+)")   # a take's file (or partial): its prefix and number


def remove_leftovers(folder: Path) -> list[Path]:
    """What writers killed mid-take left in ``folder`` (and its ``*.stems`` folders): their partial files
    and the claims of takes they never finished, with a sidecar that never got its audio. Files of a
    writer still running (another daemon, a render on the same folder) are left alone. Returns what
    was removed."""
    folder = Path(folder)
    gone: list[Path] = []
    if not folder.is_dir():
        return gone
    for path in list(folder.glob(f"*{PARTIAL}")) + list(folder.glob(f"*.stems/*{PARTIAL}")):
        m = _LEFTOVER.search(path.name)
        if m is None or not _pid_alive(int(m.group(1))):   # (a partial without a pid: an older stemd's)
            path.unlink(missing_ok=True)
            gone.append(path)
    for claim in folder.glob(f".*{_CLAIM}"):
        try:
            pid, *names = claim.read_text().split("\n")
            alive = _pid_alive(int(pid))
        except (OSError, ValueError):
            names, alive = [], False
        if alive:
            continue
        audio = [n for n in names if n and not n.endswith(".json")]
        if not all((folder / n).exists() for n in audio):     # unfinished: its sidecars are orphans
            for n in names:
                if n.endswith(".json") and (folder / n).exists():
                    (folder / n).unlink()
                    gone.append(folder / n)
        claim.unlink(missing_ok=True)
        gone.append(claim)
    return gone


class TakeClaims:
    """Take numbers claimed atomically, so two writers on one folder (two daemons, serve and render)
    never pick the same: a claim is ``.<prefix>_take<NN>.claim`` created exclusively, holding the
    writer's pid and the files it will write; a number whose files exist is skipped. The folder is
    listed once per prefix, not before every take; after :meth:`index` (once, at a daemon's start) not
    even that: the highest number of every prefix is known."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._next: dict[str, int] = {}
        self._highest: Optional[dict[str, int]] = None

    def index(self) -> int:
        """List the folder once and keep the highest take number of every prefix; returns the names seen."""
        highest: dict[str, int] = {}
        seen = 0
        if self.folder.is_dir():
            with os.scandir(self.folder) as entries:
                for entry in entries:
                    seen += 1
                    m = _TAKE_NUMBER.match(entry.name)
                    if m:
                        highest[m.group(1)] = max(highest.get(m.group(1), 0), int(m.group(2)))
        self._highest = highest
        return seen

    def _first_number(self, prefix: str) -> int:
        if self._highest is None:
            return next_take_number(self.folder, prefix)
        return self._highest.get(prefix, 0) + 1

    def claim(self, prefix: str, names_of: Callable[[int], list]) -> tuple[int, Path]:
        """``(number, claim file)`` for the next free take number of ``prefix``; ``names_of(number)``
        lists the file names that number's take will have."""
        self.folder.mkdir(parents=True, exist_ok=True)
        number = self._next.get(prefix) or self._first_number(prefix)
        while True:
            claim = self.folder / f".{prefix}_take{number:02d}{_CLAIM}"
            names = names_of(number)
            try:
                fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                number += 1
                continue
            try:
                with os.fdopen(fd, "w") as f:
                    f.write("\n".join([str(os.getpid()), *names]))
            except BaseException:        # (a full disk): no claim left behind
                claim.unlink(missing_ok=True)
                raise
            if any((self.folder / n).exists() for n in names):
                claim.unlink(missing_ok=True)
                number += 1
                continue
            self._next[prefix] = number + 1
            return number, claim


def write_json(path: Union[str, Path], value, indent: int = 2) -> None:
    atomic_write(path, json.dumps(value, indent=indent, sort_keys=True) + "\n")


def write_take_file(folder: Path, file_name: str, data: bytes, sidecar: dict, stems: Optional[dict] = None,
                    *, under: str = "") -> Path:
    """The one take writer: ``stems`` (name -> (relative file, bytes)), then the sidecar, then the take's
    own file, each atomically; the take's file under its final name is what makes it finished. The
    sidecar records the file's name and SHA-256 (and each stem's): at its top level, or under the key
    ``under`` (a client's ``delivery``: the daemon's sidecar above it stays as it came). Returns the take
    file's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = inside(folder, file_name)
    facts: dict = {"file": file_name, "sha256": hashlib.sha256(data).hexdigest()}
    if stems is not None:
        facts["stems"] = {}
        for stem, (rel, stem_data) in stems.items():
            stem_path = inside(folder, rel)
            stem_path.parent.mkdir(exist_ok=True)
            atomic_write(stem_path, stem_data)
            facts["stems"][stem] = {"file": rel, "sha256": hashlib.sha256(stem_data).hexdigest()}
    meta = _with_facts(sidecar, facts, under)
    write_json(path.with_suffix(".json"), meta)
    atomic_write(path, data)
    return path


def write_take(folder: Path, name: str, audio: np.ndarray, sample_rate: int, sidecar: dict,
               subtype: str = "float32", *, under: str = "") -> Path:
    """``name.wav`` from ``audio`` ``(channels, n)`` and ``name.json`` into ``folder``; returns the WAV's path.
    The WAV's own facts (rate, channels, frames, format, name, hash) go at the sidecar's top or ``under``."""
    facts = {"sample_rate": sample_rate, "channels": int(np.shape(audio)[0]), "frames": int(np.shape(audio)[-1]),
             "format": subtype}
    meta = _with_facts(sidecar, facts, under)
    return write_take_file(folder, name + ".wav", wav_bytes(audio, sample_rate, subtype), meta, under=under)


def _with_facts(sidecar: dict, facts: dict, under: str) -> dict:
    return {**sidecar, under: {**sidecar.get(under, {}), **facts}} if under else {**sidecar, **facts}


def read_sidecar(wav: Path) -> dict:
    return json.loads(Path(wav).with_suffix(".json").read_text())
