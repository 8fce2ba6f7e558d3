"""Live playback: scheduling on the output's clock (unit), and a take played through a real PortAudio
output (JACK's dummy server) and recorded back with jack_rec."""

from __future__ import annotations

import shutil
import subprocess
from fractions import Fraction

import numpy as np
import pytest
import soundfile

from stemd.bridge.delivery import DeliveredTake
from stemd.bridge.delivery.live import Mixer, start_quarters
from stemd.bridge.transport import Transport
from stemd.protocol import GenerateRequest


def take_at(bar: int, audio: np.ndarray, rate: int = 48000) -> DeliveredTake:
    request = GenerateRequest("t1", bars=1, start_bar=bar)
    return DeliveredTake("t1", request, 0, None, audio, rate, 0)


def test_voice_starts_on_its_sample_across_buffers():
    mixer, rate = Mixer(2), 48000
    audio = np.ones((2, 1000), np.float32)
    mixer.add(audio, start=1.0)
    out, played = np.zeros((256, 2), np.float32), []
    t = 0.99
    for _ in range(10):
        mixer.render(out, t, rate)
        played.append(out.copy())
        t += 256 / rate
    signal = np.concatenate(played)[:, 0]
    first = np.flatnonzero(signal)[0]
    assert first == round(0.01 * rate) and signal[first:first + 1000].sum() == 1000 and not mixer.voices


def test_a_late_voice_skips_what_it_missed_and_stays_on_the_grid():
    mixer, rate = Mixer(1), 48000
    ramp = np.arange(2000, dtype=np.float32)[None, :]
    mixer.add(ramp, start=1.0)
    out = np.zeros((256, 1), np.float32)
    mixer.render(out, 1.0 + 100 / rate, rate)  # this buffer plays 100 samples after the voice should start
    assert out[0, 0] == 100 and out[-1, 0] == 355


def test_start_bar_ahead_plays_there_else_on_the_next_bar_line():
    transport = Transport(120, "4/4")
    transport.update(quarters=Fraction(21, 2), playing=True)  # bar 3, beat 3 and a half
    state = transport.now()
    assert start_quarters(take_at(5, np.zeros((2, 1))), state, 0.05) == 20  # its own bar 6 is ahead
    assert start_quarters(take_at(1, np.zeros((2, 1))), state, 0.05) == 12  # bar 2 is gone: next bar line
    transport.update(playing=False)
    assert start_quarters(take_at(5, np.zeros((2, 1))), transport.now(), 0.05) is None


PLAY_AND_RECORD = """
import json, subprocess, sys, time
import numpy as np, sounddevice as sd, soundfile
from stemd.bridge.delivery import DeliveredTake
from stemd.bridge.delivery.live import LivePlayer
from stemd.bridge.transport import Transport
from stemd.protocol import GenerateRequest

if not any(api["name"].startswith("JACK") for api in sd.query_hostapis()):
    print(json.dumps({"skip": "this PortAudio has no JACK host API"})); sys.exit(0)
device = next(i for i, d in enumerate(sd.query_devices())
              if sd.query_hostapis(d["hostapi"])["name"].startswith("JACK") and d["max_output_channels"] >= 2)
transport = Transport(120, "4/4")
player = LivePlayer(transport, device=device)
rate, wav = 48000, sys.argv[1]
audio = np.zeros((2, rate // 2), np.float32)
audio[:, ::4800] = 0.8  # five clicks, 100 ms apart
player._open(rate)
ports = [p for p in subprocess.run(["jack_lsp"], capture_output=True, text=True).stdout.split() if p.startswith("PortAudio:out")]
rec = subprocess.Popen(["jack_rec", "-f", wav, "-d", "6", ports[0]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
time.sleep(0.5)
transport.update(quarters=0, playing=True)  # bar 1 starts now
player.deliver(DeliveredTake("t1", GenerateRequest("t1", bars=1, start_bar=1), 0, None, audio, rate, 0))
ok = player.last.done.wait(5)
rec.wait(10)
voice = player.last
print(json.dumps({"done": ok, "late_s": voice.started_at - voice.start}))
"""


@pytest.mark.skipif(not shutil.which("jack_rec"), reason="jack_rec (Debian jackd2) is not installed")
def test_take_plays_through_portaudio_on_jack_and_is_recorded(jack, tmp_path):
    import json
    import sys

    wav = tmp_path / "recorded.wav"
    # its own process: PortAudio sees JACK only if it starts after the server, and its JACK host API
    # asserts on shutdown in some builds
    proc = jack.start([sys.executable, "-c", PLAY_AND_RECORD, str(wav)], stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=60)
    result = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    if "skip" in result:
        pytest.skip(result["skip"])
    assert result.get("done"), out + err
    recorded, rate = soundfile.read(wav, dtype="float32", always_2d=True)
    clicks = np.flatnonzero(recorded[:, 0] > 0.5)
    assert rate == 48000 and len(clicks) == 5, clicks
    assert np.all(np.diff(clicks) == 4800)  # the take, sample for sample, not stretched or cut
    # PortAudio's own clock: the first sample left at the time scheduled for bar 2
    assert abs(result["late_s"]) < 1 / 48000
