"""stemd for Ableton Live 12: a Remote Script that reports tempo and transport over OSC and puts takes on
the arrangement at a beat position.

Install with ``stemd install-host-scripts --daw ableton``, then pick "stemd_live" as a Control Surface in
Live's Settings > Link, Tempo & MIDI. It listens on UDP 127.0.0.1:11000 and speaks the subset of
AbletonOSC's addresses the bridge's ``--follow ableton`` uses (so either can be used), plus one of ours:

    /live/song/get/<prop>            -> /live/song/get/<prop> <value>     (to the sender)
    /live/song/start_listen/<prop>   the sender gets /live/song/get/<prop> whenever it changes
    /live/song/stop_listen/<prop>
        <prop>: tempo, is_playing, current_song_time (beats), signature_numerator, signature_denominator
    /stemd/live/insert_clip <track> <file> <beat>
        -> Track.create_audio_clip(file, beat) on audio track <track> (1-based; 0 = the selected track; a string: the track of that name),
           answered /stemd/live/inserted <file> <beat> or /stemd/live/error <message>. Live 12.0.5+.

Inside Live the script is a ``ControlSurface`` (Live's ``ableton.v2.control_surface``, as AbletonOSC's is),
so Live finds every method it may call; outside Live (tests, with stand-ins for Live's objects) the same
class stands on ``object`` and keeps its own no-op answers. Live calls ``update_display`` about ten times
a second; everything happens there, on Live's thread.
"""

import socket

from . import osc_min

try:  # only inside Live
    from ableton.v2.control_surface import ControlSurface
except ImportError:
    ControlSurface = None

PORT = 11000
PROPERTIES = ("tempo", "is_playing", "current_song_time", "signature_numerator", "signature_denominator")


def create_instance(c_instance):
    return StemdLive(c_instance)


class StemdLive(ControlSurface or object):
    def __init__(self, c_instance, port=PORT, host="127.0.0.1"):
        if ControlSurface is not None:
            ControlSurface.__init__(self, c_instance)
        self.c_instance = c_instance
        self.listeners = {}  # prop -> set of (host, port)
        self.last_sent = {}  # (prop, peer) -> value
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.show("stemd: listening on udp %s:%d" % (host, self.port))

    # --- Live's side -------------------------------------------------------------------------
    def live_song(self):
        return self.c_instance.song()

    def show(self, text):
        try:
            self.c_instance.show_message(text)
        except Exception:
            pass

    def disconnect(self):
        self.sock.close()
        if ControlSurface is not None:
            ControlSurface.disconnect(self)

    def update_display(self):
        """Called by Live about every 100 ms: answer what arrived, send what changed."""
        if ControlSurface is not None:
            ControlSurface.update_display(self)
        for _ in range(64):
            try:
                data, peer = self.sock.recvfrom(65536)
            except (BlockingIOError, socket.error):
                break
            try:
                address, args = osc_min.decode(data)
            except ValueError:
                continue
            self.handle(address, args, peer)
        for prop, peers in self.listeners.items():
            value = self.get(prop)
            for peer in list(peers):
                if self.last_sent.get((prop, peer)) != value:
                    self.send(peer, "/live/song/get/" + prop, value)

    # the rest of what Live asks a Remote Script
    def connect_script_instances(self, instanciated_scripts):
        pass

    def refresh_state(self):
        pass

    def build_midi_map(self, midi_map_handle):
        pass

    def receive_midi(self, midi_bytes):
        pass

    def can_lock_to_devices(self):
        return False

    def suggest_input_port(self):
        return ""

    def suggest_output_port(self):
        return ""

    def suggest_map_mode(self, cc_no, channel):
        return -1

    # --- OSC ---------------------------------------------------------------------------------
    def send(self, peer, address, *args):
        if address.startswith("/live/song/get/") and args:
            self.last_sent[(address.rsplit("/", 1)[1], peer)] = args[0]
        try:
            self.sock.sendto(osc_min.encode(address, *args), peer)
        except (socket.error, ValueError):
            pass

    def get(self, prop):
        song = self.live_song()
        value = getattr(song, prop)
        if prop in ("tempo", "current_song_time"):
            return float(value)
        if prop == "is_playing":
            return bool(value)
        return int(value)

    def handle(self, address, args, peer):
        parts = address.strip("/").split("/")
        if len(parts) == 4 and parts[:2] == ["live", "song"] and parts[3] in PROPERTIES:
            verb, prop = parts[2], parts[3]
            if verb == "get":
                self.send(peer, address, self.get(prop))
            elif verb == "start_listen":
                self.listeners.setdefault(prop, set()).add(peer)
                self.last_sent.pop((prop, peer), None)
            elif verb == "stop_listen":
                self.listeners.get(prop, set()).discard(peer)
            return
        if address == "/stemd/live/insert_clip":
            try:
                track = args[0] if isinstance(args[0], str) else int(args[0])
                path, beat = str(args[1]), float(args[2])
                self.insert_clip(track, path, beat)
                self.send(peer, "/stemd/live/inserted", path, beat)
            except Exception as e:  # everything goes back to the bridge and to Live's status bar
                text = "%s: %s" % (type(e).__name__, e)
                self.send(peer, "/stemd/live/error", text)
                self.show("stemd: " + text)
            return
        self.send(peer, "/stemd/live/error", "unknown address " + address)

    def insert_clip(self, track_number, path, beat):
        """``track_number``: 1-based, 0 for the selected track, or a track's name."""
        song = self.live_song()
        if isinstance(track_number, str):
            named = [t for t in song.tracks if getattr(t, "name", "").strip().lower() == track_number.strip().lower()]
            if not named:
                raise ValueError("there is no track named %r" % track_number)
            track = named[0]
        elif track_number <= 0:   # the selected track, else (not an audio track) the first audio track
            track = song.view.selected_track
            if not getattr(track, "has_audio_input", False):
                audio = [t for t in song.tracks if getattr(t, "has_audio_input", False)]
                track = audio[0] if audio else track
        else:
            tracks = list(song.tracks)
            if track_number > len(tracks):
                raise ValueError("there is no track %d (the set has %d)" % (track_number, len(tracks)))
            track = tracks[track_number - 1]
        if not getattr(track, "has_audio_input", False):
            raise ValueError("track %r is not an audio track" % getattr(track, "name", track_number))
        if not hasattr(track, "create_audio_clip"):
            raise RuntimeError("this Live has no Track.create_audio_clip: Live 12.0.5 or newer is needed")
        track.create_audio_clip(path, beat)
        self.show("stemd: %s at beat %g" % (path.rsplit("/", 1)[-1], beat))
