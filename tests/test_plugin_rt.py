"""Real-time safety of the stemd plugin's audio callback, in a real host process.

tests/rt_probe.c is preloaded (LD_PRELOAD) into jalv hosting the LV2 on JACK. The plugin's run() calls
``stemd_rt_probe(1)`` on entry and ``stemd_rt_probe(0)`` before it returns (a weak symbol that only the
probe defines); between the two, on that thread, the probe counts every allocation, free, lock and
system call made through libc, and writes the counts when the process exits. While a take streams in
from a real ``stemd serve`` (paced, so bars keep arriving while the transport rolls over them) and
plays, the counts must be zero, over thousands of run() calls.

The same runs for the JACK standalone (DPF's own JACK host), a take asked for by MIDI note 6 while a guide
is recorded from its MIDI input (note 7 arms the recorder; run() keeps each note it plays).

The first test shows the probe sees such calls: a small program that allocates, locks and writes
between the two calls is counted, call by call.
"""

from __future__ import annotations

import importlib.util
import subprocess
import time

import pytest


from plugin_hosts import (NOTE_GENERATE, NOTE_RECORD_GUIDE, JackApp, Jalv, Timebase, build_jack_timebase, build_rt_probe, compile_c,
                          needs_cc, needs_jalv, plugin_build, read_rt_probe)  # noqa: F401 (fixture)
from stemd.guides.smf import read_smf
from stemd.timing import Grid, Meter

pytestmark = needs_cc

CULPRIT = r"""
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
__attribute__((weak)) void stemd_rt_probe(int entering);
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static void *keep;
int main(int argc, char **argv) {
    (void)argv;
    if (!stemd_rt_probe) return 3;              /* the probe is not preloaded */
    keep = malloc(64);                          /* outside: not counted */
    for (int i = 0; i < 3; i++) {
        stemd_rt_probe(1);
        if (argc > 1) {                         /* the bad audio callback */
            char *p = malloc(256);
            memset(p, 1, 256);
            pthread_mutex_lock(&lock);
            pthread_mutex_unlock(&lock);
            if (write(1, p, 0) < 0) return 4;
            free(p);
        }
        stemd_rt_probe(0);
    }
    free(keep);
    return 0;
}
"""


def test_the_probe_counts_allocations_locks_and_system_calls_made_inside_the_callback_only(tmp_path):
    probe = build_rt_probe(tmp_path)
    source = tmp_path / "culprit.c"
    source.write_text(CULPRIT)
    exe = compile_c(source, tmp_path / "culprit", "-O0", "-fno-builtin", "-lpthread")
    assert subprocess.run([str(exe)]).returncode == 3          # no probe, no hook: nothing is called

    counts = {}
    for case, args in (("clean", []), ("bad", ["bad"])):
        out = tmp_path / f"{case}.jsonl"
        run = subprocess.run([str(exe), *args], env={"LD_PRELOAD": str(probe), "STEMD_RT_PROBE_OUT": str(out)})
        assert run.returncode == 0
        [counts[case]] = read_rt_probe(out)
    assert counts["clean"]["entries"] == 3
    assert {k: counts["clean"][k] for k in ("alloc", "free", "lock", "syscall", "futex")} == \
        dict(alloc=0, free=0, lock=0, syscall=0, futex=0)
    bad = counts["bad"]
    assert bad["entries"] == 3
    assert bad["calls"] == {"malloc": 3, "pthread_mutex_lock": 3, "write": 3, "free": 3}, bad
    assert bad["first"]["alloc"].startswith("malloc via") and "culprit" in bad["first"]["alloc"]


@needs_jalv
def test_the_lv2_run_makes_no_allocation_lock_or_system_call_while_a_take_streams_in_and_plays(
        jack, tmp_path, start_daemon, plugin_build):
    probe = build_rt_probe(tmp_path)
    report = tmp_path / "rt.jsonl"
    # click takes paced to 1 s a bar: bars keep arriving while the transport plays over the earlier ones
    daemon = start_daemon("--pace", "1")
    timebase = Timebase(jack, build_jack_timebase(tmp_path), 97, Meter(3, 4))
    jalv = Jalv(jack, plugin_build, "stemd-jalv-rt", tmp_path / "jalv.log", controls={"bars": 6, "start_bar": 2},
                env={"STEMD_DAEMON": f"127.0.0.1:{daemon.port}", "STEMD_TAKES_DIR": str(tmp_path / "plugin-takes"),
                     "LD_PRELOAD": str(probe), "STEMD_RT_PROBE_OUT": str(report)})
    jalv.wait_ports()
    assert jalv.wait_value("connected", 1, timeout=20) == 1, jalv.log.read_text()[-2000:]
    timebase.tell("locate 0")
    timebase.tell("play")
    time.sleep(0.5)
    jalv.set("generate", 1)
    assert jalv.wait_value("bars_received", 2, timeout=30) >= 2, jalv.log.read_text()[-2000:]
    streaming = jalv.value("bars_received")
    assert streaming < 6, "the take arrived all at once: nothing streamed while the host played"
    assert jalv.wait_value("bars_received", 6, timeout=30) == 6, jalv.log.read_text()[-2000:]
    time.sleep(2.0)                            # the last bars play (bar 7 ends 13 s in)
    timebase.tell("stop")
    jack.stop(jalv.proc)                       # SIGTERM: jalv shuts down and exits, the probe reports
    assert jalv.proc.returncode == 0, jalv.log.read_text()[-2000:]
    lines = [line for line in read_rt_probe(report) if line["entries"]]
    assert len(lines) == 1, f"the probe reported {read_rt_probe(report)}: did run() call stemd_rt_probe?"
    counts = lines[0]
    assert counts["entries"] > 1000, counts    # run() calls of 256 frames over ~13 s at 48 kHz: ~2400
    assert {k: counts[k] for k in ("alloc", "free", "lock", "syscall", "futex")} == \
        dict(alloc=0, free=0, lock=0, syscall=0, futex=0), counts


@pytest.mark.skipif(importlib.util.find_spec("rtmidi") is None,
                    reason="python-rtmidi (MIDI to the JACK app) is not installed")
def test_the_jack_app_run_makes_no_allocation_lock_or_system_call_while_a_take_streams_in_and_plays(
        jack, tmp_path, start_daemon, plugin_build):
    probe = build_rt_probe(tmp_path)
    report = tmp_path / "rt.jsonl"
    daemon = start_daemon("--pace", "1")       # 4 bars from note 6, one a second, while the transport plays
    timebase = Timebase(jack, build_jack_timebase(tmp_path), 97, Meter(3, 4))
    app = JackApp(jack, plugin_build, tmp_path, env={"STEMD_DAEMON": f"127.0.0.1:{daemon.port}",
                                                     "STEMD_TAKES_DIR": str(tmp_path / "plugin-takes"),
                                                     "LD_PRELOAD": str(probe), "STEMD_RT_PROBE_OUT": str(report)})
    deadline = time.monotonic() + 20
    while "connected (osc1.0" not in daemon.log and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "connected (osc1.0" in daemon.log, f"the JACK app did not connect:\n{app.log.read_text()[-2000:]}"
    timebase.tell("locate 0")
    timebase.tell("play")
    timebase.roll_to(48000 // 4)
    app.note(NOTE_RECORD_GUIDE)                # a guide recorded too: bars 2-5, run() keeping every event
    app.note(NOTE_GENERATE)                    # 4 bars from bar 2
    timebase.roll_to(Grid(97, "3/4").bar_start_sample(1, 48000) + 4800)
    for pitch in (60, 64, 67, 72):             # inside bar 2: the guide's
        app.note(pitch)
    daemon.wait_log("-> done", timeout=30)
    deadline = time.monotonic() + 20           # the recording ends at bar 6 (9.3 s in)
    while not list((tmp_path / "plugin-takes").glob("guide-*.mid")) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    timebase.tell("stop")
    jack.stop(app.proc)                        # SIGTERM: the app closes and exits, the probe reports
    lines = [line for line in read_rt_probe(report) if line["entries"]]
    assert len(lines) == 1, f"the probe reported {read_rt_probe(report)}: did run() call stemd_rt_probe?"
    counts = lines[0]
    assert counts["entries"] > 1000, counts
    assert {k: counts[k] for k in ("alloc", "free", "lock", "syscall", "futex")} == \
        dict(alloc=0, free=0, lock=0, syscall=0, futex=0), counts
    guides = list((tmp_path / "plugin-takes").glob("guide-*.mid"))
    assert len(guides) == 1, f"no guide was recorded: {app.log.read_text()[-2000:]}"
    assert [n.pitch for n in read_smf(guides[0].read_bytes())] == [60, 64, 67, 72]
