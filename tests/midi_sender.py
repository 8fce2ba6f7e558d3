"""A separate JACK MIDI client for tests: ``python midi_sender.py CLIENT`` opens CLIENT:out, prints
``ready``, then sends each stdin line: a JSON list of events (byte lists) or ``{"sleep": s}``."""

import json
import sys
import time

import rtmidi

out = rtmidi.MidiOut(rtapi=rtmidi.API_UNIX_JACK, name=sys.argv[1])
out.open_virtual_port("out")
print("ready", flush=True)
for line in sys.stdin:
    item = json.loads(line)
    if isinstance(item, dict):
        time.sleep(item["sleep"])
        continue
    for event in item:
        out.send_message(event)
        if len(item) > 64:
            time.sleep(0.0002)  # a flood: let JACK's ring buffer drain now and then
    print("sent", flush=True)
