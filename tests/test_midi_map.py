"""Map files, curves, the tolerant decoder and the mapping logic (no ports: see test_midi_jack.py)."""

import textwrap
from pathlib import Path

import mido
import pytest

from stemd.midi.curves import knob_value
from stemd.midi.decode import MidiDecoder
from stemd.midi.learn import learn_into_file, learn_into_text
from stemd.midi.mapfile import Control, MapError, load, parse
from stemd.midi.mapper import Mapper
from stemd.errors import StemdError

MAPS = Path(__file__).resolve().parent.parent / "bridge" / "maps"

BASE = textwrap.dedent("""\
    # my map
    [slots.drums]
    prompt = "funk drums"
    bars = 4

    [[bind]]
    note = 36
    action = "generate"
    slot = "drums"
    """)


class Recorder:
    """Stands in for the bridge: records what the mapping asked of it."""

    def __init__(self):
        self.calls = []
        self.n = 0

    def generate(self, slot, params):
        self.n += 1
        self.calls.append(("generate", slot, dict(params)))
        return f"take{self.n}"

    def _take(self, name, take_id):
        self.calls.append((name, take_id))

    def reroll(self, take_id):
        self.n += 1
        self.calls.append(("reroll", take_id))
        return f"take{self.n}"

    def extend(self, take_id):
        self._take("extend", take_id)

    def accept(self, take_id):
        self._take("accept", take_id)

    def cancel(self, take_id):
        self._take("cancel", take_id)

    def next_variation(self, take_id):
        self._take("next_variation", take_id)

    def previous_variation(self, take_id):
        self._take("previous_variation", take_id)

    def audition(self, take_id):
        self._take("audition", take_id)


def errors_of(text):
    with pytest.raises(MapError) as e:
        parse(text, "map.toml")
    return str(e.value).splitlines()


# --- map files ---------------------------------------------------------------------------------
@pytest.mark.parametrize("path", sorted(MAPS.glob("*.toml")), ids=lambda p: p.name)
def test_example_maps_load(path):
    m = load(path)
    assert m.bindings and m.slots


def test_unknown_action_is_reported_on_its_line():
    text = BASE + '\n[[bind]]\nnote = 37\naction = "explode"\n'
    assert errors_of(text) == ["map.toml:13: unknown action 'explode'; actions: generate, reroll, accept, extend, "
                               "cancel, next_variation, previous_variation, audition, param, bank"]


def test_note_200_is_reported_on_its_line():
    text = BASE + '\n[[bind]]\naction = "accept"\nnote = 200\n'
    assert errors_of(text) == ["map.toml:13: note 200 is outside 0..127"]


def test_duplicate_binding_names_both_lines():
    text = BASE + '\n[[bind]]\nnote = 36\naction = "accept"\n'
    assert errors_of(text) == ["map.toml:11: duplicate binding: note 36 is already bound on line 6 (generate drums)"]


def test_omni_binding_overlaps_a_channel_binding():
    text = BASE + '\n[[bind]]\nnote = 36\nchannel = 10\naction = "accept"\n'
    assert "duplicate binding: note 36 on channel 10" in errors_of(text)[0]


def test_same_note_on_two_channels_is_fine():
    text = BASE.replace("note = 36\n", "note = 36\nchannel = 1\n") + '\n[[bind]]\nnote = 36\nchannel = 2\naction = "accept"\n'
    assert len(parse(text).bindings) == 2


def test_all_errors_are_reported_at_once_in_line_order():
    text = BASE.replace("bars = 4", "bars = 999") + '\n[[bind]]\ncc = 128\naction = "param"\n[wat]\n'
    lines = errors_of(text)
    assert [line.split(":")[1] for line in lines] == ["4", "12", "14"]
    assert "bars must be 1..256, got 999" in lines[0] and "cc 128 is outside 0..127" in lines[1]
    assert "unknown table 'wat'" in lines[2]


def test_toml_syntax_error_has_its_line():
    assert errors_of(BASE + "\n[[bind]]\nnote = = 3\n")[0].startswith("map.toml:12: TOML syntax:")


def test_param_needs_a_cc_and_a_range_inside_the_protocol_limits():
    knob = '\n[[bind]]\n{} = 21\naction = "param"\nparam = "temperature"\nmin = {}\n'
    assert "needs a knob: bind it to cc" in errors_of(BASE + knob.format("note", 0.5))[0]
    assert errors_of(BASE + knob.format("cc", 9.0)) == ["map.toml:15: min 9.0 for temperature is outside 0.01..5"]


def test_unknown_slot_lists_the_slots():
    assert "unknown slot 'bass'; slots: drums" in errors_of(BASE.replace('slot = "drums"', 'slot = "bass"'))[0]


# --- curves --------------------------------------------------------------------------------------
def test_curves_reach_both_ends_and_bend_as_named():
    assert knob_value(0, 0.5, 2.0, "exp") == 0.5 and knob_value(127, 0.5, 2.0, "exp") == 2.0
    mid = 64
    assert knob_value(mid, 0.5, 2.0, "exp") == pytest.approx(0.5 * 4 ** (64 / 127), abs=1e-6)  # geometric
    assert knob_value(mid, 0.0, 1.0, "log") > 0.7 > knob_value(mid, 0.0, 1.0, "linear")
    assert knob_value(127, 25, 500, "exp", integer=True) == 500
    assert [knob_value(v, 0, 0, steps=[1, 2, 4, 8]) for v in (0, 40, 80, 127)] == [1, 2, 4, 8]


# --- learn writes back -----------------------------------------------------------------------
def test_learn_appends_a_binding_and_keeps_comments():
    new = learn_into_text(BASE, Control("cc", 21, 1), "param", "temperature")
    assert new.startswith("# my map\n") and "[[bind]]\ncc = 21\nchannel = 1\naction = \"param\"" in new
    b = parse(new).bindings[-1]
    assert (b.action, b.param, b.control) == ("param", "temperature", Control("cc", 21, 1))


def test_learn_moves_an_existing_binding_and_frees_the_control(tmp_path):
    path = tmp_path / "map.toml"
    path.write_text(BASE + '\n[[bind]]  # the stop pad\nnote = 40\naction = "cancel"\n')
    m = learn_into_file(path, Control("note", 40, None), "generate", "drums")
    assert [(b.action, b.control.number) for b in m.bindings] == [("generate", 40)]
    text = path.read_text()
    assert "# my map" in text and 'slot = "drums"' in text and "cancel" not in text


def test_learn_refuses_what_the_map_lacks(tmp_path):
    path = tmp_path / "map.toml"
    path.write_text(BASE)
    mapper = Mapper(load(path), Recorder())
    with pytest.raises(StemdError, match="unknown slot 'bass'"):
        mapper.learn("generate:bass")
    with pytest.raises(StemdError, match="cannot learn 'dance'"):
        mapper.learn("dance")


# --- decoding ------------------------------------------------------------------------------------
def test_running_status_across_events():
    d = MidiDecoder()
    out = d.feed([0x90, 60, 100]) + d.feed([62, 90]) + d.feed([64, 0])
    assert [(m.type, m.note, m.velocity) for m in out] == [("note_on", 60, 100), ("note_on", 62, 90),
                                                           ("note_on", 64, 0)]
    assert d.stats.running_status == 2


def test_realtime_inside_a_message_and_garbage_are_survived():
    d = MidiDecoder()
    out = d.feed([0xB0, 0xF8, 7, 0xFD, 100, 0xF4, 5, 0xF5, 0xF7, 33])
    assert [m.type for m in out] == ["clock", "control_change"] and out[1].value == 100
    assert d.stats.dropped_bytes == 6  # 0xFD, 0xF4, 5, 0xF5, 0xF7, 33


def test_sysex_split_over_events_and_overlong_sysex():
    d = MidiDecoder(max_sysex=8)
    assert d.feed([0xF0, 1, 2]) == [] and d.feed([3, 0xF7])[0].data == (1, 2, 3)
    assert d.feed([0xF0] + [1] * 100 + [0xF7]) == [] and d.stats.sysex_too_long == 1
    # an unterminated sysex ends at the next status byte; that message still arrives
    assert d.feed([0xF0, 1, 2, 0x90, 36, 127])[0].note == 36


# --- mapping logic -------------------------------------------------------------------------------
def full_map(tmp_path):
    path = tmp_path / "map.toml"
    path.write_text((MAPS / "generic-16-pads.toml").read_text())
    return load(path)


def test_pads_knobs_and_banks_drive_the_target(tmp_path):
    rec, sent = Recorder(), []
    m = Mapper(full_map(tmp_path), rec, send=sent.append)
    m.handle(mido.Message("control_change", channel=9, control=70, value=127))   # temperature -> 1.5
    m.handle(mido.Message("program_change", channel=0, program=1))               # bank dark
    m.handle(mido.Message("note_on", channel=9, note=36, velocity=100))          # generate drums
    assert rec.calls[-1] == ("generate", "drums", {"prompt": "dark minimal techno drums", "bars": 4,
                                                   "stem": "drums", "temperature": 1.5})
    m.handle(mido.Message("note_on", channel=9, note=40, velocity=100))          # reroll take1 -> take2
    m.handle(mido.Message("note_on", channel=9, note=41, velocity=100))          # accept the new take
    assert rec.calls[-2:] == [("reroll", "take1"), ("accept", "take2")]
    m.handle(mido.Message("note_on", channel=0, note=36, velocity=100))          # wrong channel: nothing
    m.handle(mido.Message("note_on", channel=9, note=36, velocity=0))            # a release: nothing
    assert len(rec.calls) == 3


def test_take_states_light_the_slots_pad(tmp_path):
    sent = []
    m = Mapper(full_map(tmp_path), Recorder(), send=sent.append)
    m.handle(mido.Message("note_on", channel=9, note=37, velocity=100))  # generate bass -> take1
    for state in ("queued", "generating", "ready", "playing"):
        m.take_state("take1", state)
    assert sent == [[0x99, 37, 5], [0x99, 37, 6], [0x99, 37, 1], [0x99, 37, 2]]


def test_a_failing_action_does_not_escape(tmp_path):
    class Broken(Recorder):
        def generate(self, slot, params):
            raise RuntimeError("daemon gone")

    m = Mapper(full_map(tmp_path), Broken())
    assert m.handle(mido.Message("note_on", channel=9, note=36, velocity=100)) is None
    assert m.handle(mido.Message("sysex", data=[1, 2, 3])) is None


def test_stemd_serve_reports_a_bad_map_by_line_before_loading_a_model(tmp_path):
    import subprocess
    import sys

    (tmp_path / "map.toml").write_text('[slots.a]\nprompt = "x"\n\n[[bind]]\nnote = 200\naction = "generate"\n'
                                       'slot = "a"\n')
    out = subprocess.run([sys.executable, "-m", "stemd", "serve", "--model", str(tmp_path / "no-model"),
                          "--map", str(tmp_path / "map.toml"), "--port", "0"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip().endswith("map.toml:5: note 200 is outside 0..127"), out.stderr
    assert "no-model" not in out.stderr  # the map is checked before the model is looked for


def test_a_slot_names_the_daemons_model_it_generates_with():
    text = BASE.replace('bars = 4\n', 'bars = 4\nmodel = "drums-model"\n', 1)
    rec = Recorder()
    Mapper(parse(text, "map.toml"), rec, send=lambda _m: None).handle(mido.Message("note_on", note=36, velocity=90))
    assert rec.calls == [("generate", "drums", {"prompt": "funk drums", "bars": 4, "model": "drums-model"})]
    assert errors_of(text.replace('"drums-model"', '"two words"')) == [
        'map.toml:5: slot drums: model must be a model name: 1-64 letters, digits, _ . - starting with a letter or '
        "digit, got 'two words'"]
