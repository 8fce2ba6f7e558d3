"""stemd for REAPER: put the takes the bridge queued on the timeline, each at the start of its bar.

A ReaScript (Python). Load it once (Actions > Show action list > New action > Load ReaScript), copy its
command ID, and start the bridge with ``--insert reaper --reaper-action <ID>``. For every take the bridge
appends a line to ``$STEMD_HOME/inbox/reaper.jsonl`` (~/.stemd by default) and sends REAPER's OSC
/action; this script then inserts each queued file with InsertMedia at TimeMap2_beatsToTime(bar) on the
take's track (its number, else the track named after its stem), as one undo step, and empties the inbox. REAPER's tempo map decides where the bar is, so
a take lands on its bar even across tempo changes.
"""

import json
import os

UNDO_ALL = -1
SET_LAST_TOUCHED = 40914   # Track: Set first selected track as last touched track
ADD_TO_CURRENT_TRACK = 0


def inbox_path():
    home = os.environ.get("STEMD_HOME") or os.path.join(os.path.expanduser("~"), ".stemd")
    return os.path.join(home, "inbox", "reaper.jsonl")


class Reaper:
    """REAPER's API as ``rpr.Name(...)`` over the ``RPR_Name`` functions of a ReaScript namespace."""

    def __init__(self, namespace):
        self._ns = namespace

    def __getattr__(self, name):
        return self._ns["RPR_" + name]


def first(result):
    """ReaScript's Python functions return (retval, *arguments); plain values pass through."""
    return result[0] if isinstance(result, (tuple, list)) else result


def bar_time(rpr, bar_index):
    """Seconds at the start of bar ``bar_index`` (0 = REAPER's first measure) in the project's tempo map."""
    return first(rpr.TimeMap2_beatsToTime(0, 0.0, int(bar_index)))


def take_track(rpr, number):
    """Track ``number`` (1-based); 0 or none: the first selected track, else the first track. Missing
    tracks are added."""
    count = first(rpr.CountTracks(0))
    if not number:
        if first(rpr.CountSelectedTracks(0)) > 0:
            return rpr.GetSelectedTrack(0, 0)
        number = 1
    while count < number:
        rpr.InsertTrackAtIndex(count, True)
        count += 1
    return rpr.GetTrack(0, number - 1)


def track_named(rpr, name):
    """The first track whose name is ``name`` (case and spaces aside), or None."""
    for index in range(first(rpr.CountTracks(0))):
        track = rpr.GetTrack(0, index)
        result = rpr.GetSetMediaTrackInfo_String(track, "P_NAME", "", False)
        if isinstance(result, (tuple, list)) and len(result) > 3 and str(result[3]).strip().lower() == name.lower():
            return track
    return None


def insert_take(rpr, take):
    """A take with a ``track_name`` goes onto that track; with a ``track`` number there; else onto the track
    named after its ``stem`` (drums), else onto the selected (or first) track."""
    number = int(take.get("track") or 0)
    stem = str(take.get("stem") or "").strip()
    name = str(take.get("track_name") or "").strip()
    if name:  # --track NAME: that track, or an error the bridge's user reads in REAPER's console
        track = track_named(rpr, name)
        if track is None:
            raise ValueError("no track named %r in this project" % name)
    else:
        track = (track_named(rpr, stem) if stem and not number else None) or take_track(rpr, number)
    rpr.SetOnlyTrackSelected(track)
    rpr.Main_OnCommand(SET_LAST_TOUCHED, 0)   # InsertMedia adds to the last-touched track, not the selected one
    rpr.SetEditCurPos(bar_time(rpr, take["bar_index"]), False, False)
    rpr.InsertMedia(take["file"], ADD_TO_CURRENT_TRACK)


def read_inbox(path):
    takes = []
    if not os.path.exists(path):
        return takes
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                take = json.loads(line)
            except ValueError:
                continue
            if isinstance(take, dict) and "file" in take and "bar_index" in take:
                takes.append(take)
    return takes


def take_batch(path):
    """The queued takes, taken over by renaming the inbox (the bridge's next take starts a new one, so
    nothing appended while this batch is inserted is lost)."""
    batch = "%s.taking-%d" % (path, os.getpid())
    try:
        os.replace(path, batch)
    except OSError:       # no inbox: nothing queued
        return []
    try:
        return read_inbox(batch)
    finally:
        os.remove(batch)


def run(rpr, path=None):
    """Insert every queued take; returns how many."""
    path = path or inbox_path()
    takes = take_batch(path)
    if not takes:
        return 0
    cursor = first(rpr.GetCursorPosition())
    rpr.Undo_BeginBlock()
    try:
        for take in takes:
            if os.path.exists(take["file"]):
                try:
                    insert_take(rpr, take)
                except ValueError as e:   # --track names a track this project does not have
                    rpr.ShowConsoleMsg("stemd: %s: %s\n" % (e, take["file"]))
            else:
                rpr.ShowConsoleMsg("stemd: take file not found: %s\n" % take["file"])
    finally:
        rpr.SetEditCurPos(cursor, False, False)
        rpr.Undo_EndBlock("stemd: insert %d take(s)" % len(takes), UNDO_ALL)
        rpr.UpdateArrange()
    return len(takes)


if "RPR_InsertMedia" in globals():  # running inside REAPER
    run(Reaper(globals()))
