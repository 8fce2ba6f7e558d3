"""Signals with known timing, for the tests and bench/conform.py.

``click_track`` draws clicks with numpy; ``drum_track`` writes a General MIDI drum pattern with mido
and renders it with the real ``fluidsynth`` and Debian's FluidR3 soundfont. Both return the audio and
the exact time of every beat, with which beats are downbeats.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from typing import Optional

import numpy as np

SOUNDFONT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
KICK, SNARE, CLOSED_HAT, CRASH = 36, 38, 42, 49


def fluidsynth_missing() -> Optional[str]:
    """Why drum tracks cannot be rendered here, or None when they can."""
    if not shutil.which("fluidsynth"):
        return "the fluidsynth CLI is not installed (apt-get install fluidsynth)"
    if not os.path.exists(SOUNDFONT):
        return f"no General MIDI soundfont at {SOUNDFONT} (apt-get install fluid-soundfont-gm)"
    return None


def click_track(bpm: float, sample_rate: int, bars: int, beats_per_bar: int = 4, start: float = 0.0,
                pickup: int = 0, tail: float = 0.5, unit_quarters: float = 1.0):
    """(mono audio, beat times, downbeat flags): ``pickup`` beats before the first downbeat at ``start``."""
    from stemd.models.click import click_sound

    period = 60.0 * unit_quarters / bpm
    times = start + np.arange(-pickup, bars * beats_per_bar) * period
    if times[0] < 0:
        raise ValueError("pickup beats would start before the audio")
    downbeat = (np.arange(-pickup, bars * beats_per_bar) % beats_per_bar) == 0
    n = int((times[-1] + period + tail) * sample_rate)
    out = np.zeros(n, dtype=np.float32)
    for t, accent in zip(times, downbeat):
        sound = click_sound(sample_rate, bool(accent))
        at = int(round(t * sample_rate))
        out[at:at + len(sound)] += sound
    return out, times, downbeat


def drum_midi(path: str, bpm: float, bars: int, start: float = 0.0, pickup: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A rock beat in 4/4 (kick 1 and 3, snare 2 and 4, eighth hats, crash on the first downbeat at
    ``start`` seconds, after ``pickup`` beats); returns (beat times, downbeat flags)."""
    import mido

    tpb = 480
    midi = mido.MidiFile(ticks_per_beat=tpb)
    track = mido.MidiTrack()
    midi.tracks.append(track)
    track.append(mido.MetaMessage("set_tempo", tempo=int(round(60_000_000 / bpm))))
    lead = int(round((start * bpm / 60.0 - pickup) * tpb))  # silence before the first hit, in ticks
    if lead < 0:
        raise ValueError("pickup beats would start before the audio")
    events = []  # (tick, note, velocity)
    for beat in range(-pickup, bars * 4):
        tick = lead + (beat + pickup) * tpb
        pos = beat % 4
        events.append((tick, CLOSED_HAT, 80))
        events.append((tick + tpb // 2, CLOSED_HAT, 60))
        if pos in (0, 2):
            events.append((tick, KICK, 120 if pos == 0 else 105))
        else:
            events.append((tick, SNARE, 110))
        if beat == 0:
            events.append((tick, CRASH, 110))
    notes = sorted(events) + sorted((t + tpb // 4, n, 0) for t, n, _ in events)
    now = 0
    for tick, note, vel in sorted(notes, key=lambda e: (e[0], e[2] == 0)):
        kind = "note_on" if vel else "note_off"
        track.append(mido.Message(kind, channel=9, note=note, velocity=vel, time=tick - now))
        now = tick
    track.append(mido.MetaMessage("end_of_track", time=tpb * 2))
    midi.save(path)
    period = 60.0 / bpm
    times = lead / tpb * period + (np.arange(-pickup, bars * 4) + pickup) * period
    return times, (np.arange(-pickup, bars * 4) % 4) == 0


def drum_track(bpm: float, sample_rate: int, bars: int, start: float = 0.0, pickup: int = 0):
    """(stereo audio, beat times, downbeat flags) of ``drum_midi`` rendered by fluidsynth."""
    return render_midi(lambda mid: drum_midi(mid, bpm, bars, start, pickup), sample_rate, gain=0.8)


def groove_midi(path: str, bpm: float, bars: int, beats_per_bar: int = 4, start: float = 0.0, band: bool = True):
    """A band groove in ``beats_per_bar``/4: drums (kick on 1, and 3 in 4/4; snare on the other beats;
    eighth hats; crash on the first downbeat), a bass note on every beat and a pad chord held through
    each bar (``band``; else drums alone), the first downbeat at ``start`` seconds. Returns (beat times,
    downbeat flags)."""
    import mido

    tpb, n = 480, beats_per_bar
    midi = mido.MidiFile(ticks_per_beat=tpb)
    track = mido.MidiTrack()
    midi.tracks.append(track)
    track.append(mido.MetaMessage("set_tempo", tempo=int(round(60_000_000 / bpm))))
    track.append(mido.Message("program_change", channel=0, program=33))     # electric bass (finger)
    track.append(mido.Message("program_change", channel=1, program=89))     # warm pad
    lead = int(round(start * bpm / 60.0 * tpb))
    roots = [40, 45, 38, 43]                     # E2 A2 D2 G2, one a bar
    events = []  # (tick, channel, note, velocity, length)
    for beat in range(bars * n):
        tick, pos, bar = lead + beat * tpb, beat % n, beat // n
        events += [(tick, 9, CLOSED_HAT, 80, tpb // 4), (tick + tpb // 2, 9, CLOSED_HAT, 55, tpb // 4)]
        if pos == 0 or (n == 4 and pos == 2):
            events.append((tick, 9, KICK, 120 if pos == 0 else 105, tpb // 4))
        else:
            events.append((tick, 9, SNARE, 100, tpb // 4))
        if beat == 0:
            events.append((tick, 9, CRASH, 100, tpb // 4))
        if not band:
            continue
        root = roots[bar % len(roots)]
        events.append((tick, 0, root + (7 if pos == n - 1 else 0), 100, tpb * 9 // 10))
        if pos == 0:
            for interval in (12, 16, 19):
                events.append((tick, 1, root + 12 + interval, 60, n * tpb - tpb // 8))
    messages = []
    for tick, channel, note, velocity, length in events:
        messages.append((tick, 1, mido.Message("note_on", channel=channel, note=note, velocity=velocity)))
        messages.append((tick + length, 0, mido.Message("note_off", channel=channel, note=note, velocity=0)))
    now = 0
    for tick, _order, message in sorted(messages, key=lambda m: (m[0], m[1])):
        track.append(message.copy(time=tick - now))
        now = tick
    track.append(mido.MetaMessage("end_of_track", time=tpb * 2))
    midi.save(path)
    period = 60.0 / bpm
    times = lead / tpb * period + np.arange(bars * n) * period
    return times, (np.arange(bars * n) % n) == 0


def groove_track(bpm: float, sample_rate: int, bars: int, beats_per_bar: int = 4, start: float = 0.0,
                 band: bool = True):
    """(stereo audio, beat times, downbeat flags) of ``groove_midi`` rendered by fluidsynth."""
    return render_midi(lambda mid: groove_midi(mid, bpm, bars, beats_per_bar, start, band), sample_rate, gain=0.6)


def render_midi(write_midi, sample_rate: int, gain: float):
    """(stereo audio, beat times, downbeat flags): ``write_midi(path)`` writes a MIDI file and returns its
    (beat times, downbeat flags); fluidsynth renders the file with FluidR3_GM at ``gain``."""
    import soundfile

    why = fluidsynth_missing()
    if why:
        raise RuntimeError(why)
    with tempfile.TemporaryDirectory() as tmp:
        mid, wav = os.path.join(tmp, "part.mid"), os.path.join(tmp, "part.wav")
        times, downbeats = write_midi(mid)
        subprocess.run(["fluidsynth", "-ni", "-q", "-g", str(gain), "-R", "0", "-C", "0", "-r", str(sample_rate),
                        "-F", wav, "-T", "wav", "-O", "float", SOUNDFONT, mid],
                       check=True, capture_output=True, timeout=60)
        audio, rate = soundfile.read(wav, dtype="float32", always_2d=True)
    assert rate == sample_rate, (rate, sample_rate)
    return np.ascontiguousarray(audio.T), times, downbeats


def attack_errors_ms(audio, rate: int, grid_times) -> np.ndarray:
    """Distance (ms) of the attack nearest each grid beat from that beat: the first sample within
    +-40 ms whose level reaches 30 % of the window's peak (channels and any leading axes averaged)."""
    x = np.abs(np.asarray(audio)).reshape(-1, np.asarray(audio).shape[-1]).mean(axis=0)
    errs = []
    for t in grid_times:
        lo, hi = max(0, int((t - 0.04) * rate)), min(len(x), int((t + 0.04) * rate))
        win = x[lo:hi]
        errs.append(((lo + np.flatnonzero(win >= 0.3 * win.max())[0]) / rate - t) * 1000)
    return np.abs(np.array(errs))
