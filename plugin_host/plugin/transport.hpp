// Bar maths for the stemd plugin, exact the way stemd.timing computes it: bar k of a grid starts at
// round_half_up(k x exact bar length x sample rate), never at a sum of rounded lengths, so the plugin and
// the daemon agree on every bar's first sample (bar 0 = the DAW's bar 1 = the timeline's origin).
//
// The host gives its tempo as a double. It becomes an exact rational once, rounded to a millionth of a
// BPM (137.5 -> 275/2, 97 -> 97/1, 120.0000000004 -> 120/1); the request carries that rational as
// "num/den", so the daemon's grid is this grid.
//
// No function here allocates, locks or blocks: run() calls them. 128-bit integers (GCC, Clang) keep
// k x length x rate exact for any bar a session reaches.
#ifndef STEMD_TRANSPORT_HPP
#define STEMD_TRANSPORT_HPP

#include <cstdint>

namespace stemd {

constexpr int64_t kTempoScale = 1000000;   // tempos are exact to 1e-6 BPM
constexpr int64_t kMinBpm = 20, kMaxBpm = 999;
constexpr int32_t kMaxMeterNumerator = 64;

struct Tempo {
    int64_t num = 120;   // quarter notes per minute = num / den, reduced, den > 0
    int64_t den = 1;
};

struct Meter {
    int32_t numerator = 4;    // units per bar
    int32_t denominator = 4;  // 1, 2, 4, 8, 16 or 32
};

// The host's tempo as an exact rational; false (and `out` untouched) for NaN, infinity or a tempo
// outside 20..999 BPM.
bool tempoFromHost(double bpm, Tempo& out) noexcept;

// The host's meter; false unless both are whole numbers stemd accepts (1..64 over 1, 2, 4, 8, 16, 32).
bool meterFromHost(double beatsPerBar, double beatType, Meter& out) noexcept;

// "num/den" (or "num" when den is 1) into `buf`; returns `buf`.
const char* tempoText(const Tempo& tempo, char* buf, int size) noexcept;

class BarGrid {
public:
    BarGrid() noexcept;
    BarGrid(const Tempo& tempo, const Meter& meter, uint32_t sampleRate) noexcept;

    // First sample of bar `bar` (>= 0) from the origin.
    int64_t barStart(int64_t bar) const noexcept;
    int64_t barLength(int64_t bar) const noexcept { return barStart(bar + 1) - barStart(bar); }
    // The bar that holds `sample` (>= 0): barStart(bar) <= sample < barStart(bar + 1).
    int64_t barAt(int64_t sample) const noexcept;
    // The first bar line at or after `sample` (at == true), or strictly after it.
    int64_t barLineFrom(int64_t sample, bool at) const noexcept;
    // Exact samples per quarter note, as a double (for reading a host's position in quarters).
    double samplesPerQuarter() const noexcept;

    const Tempo& tempo() const noexcept { return fTempo; }
    const Meter& meter() const noexcept { return fMeter; }
    uint32_t sampleRate() const noexcept { return fRate; }

private:
    Tempo fTempo;
    Meter fMeter;
    uint32_t fRate;
    // one bar = fNum / fDen samples, exactly (reduced)
    uint64_t fNum, fDen;
};

// Which DPF 1.6 wrapper fills the host's position, and how (see hostQuarters). Frames: the JACK app (the
// host's frame and bar/beat/tick fresh every block); Lv2: the same values, but only in blocks where the
// host sent a time:Position event, DPF's own sums in the blocks between.
enum class HostFormat { Frames, Lv2, Vst3, Clap };

// DPF's TimePosition, as plain values (transport.cpp does not include DPF).
struct HostPosition {
    bool playing = false;
    uint64_t frame = 0;
    bool bbtValid = false;
    int32_t bar = 1, beat = 1;
    double tick = 0, ticksPerBeat = 1920, beatsPerBar = 4, beatType = 4, beatsPerMinute = 120;
};

// The host's position in quarter notes from its bar 1, undoing how DPF 1.6 fills bar/beat/tick per
// format: VST3 divides quarters into bars of int(num x 4 / den) quarters, CLAP counts quarters as beats,
// LV2 and JACK give the meter's own bars and beats. Negative when the position is not known.
double hostQuarters(HostFormat format, const HostPosition& pos) noexcept;

// What a host's beats per minute counts. VST3 and CLAP: quarter notes (their specs). JACK's jack_position_t
// leaves it open and masters disagree: JACK's example master (and tests/jack_timebase.c) counts the meter's
// beats (97 quarters a minute in 7/8 is 194), Ardour 7 counts its tempo's note type, a quarter (97). Their
// bar/beat/tick agree (beats of beat_type), so the unit shows in how the bar/beat/tick advances against the
// frames: at beats_per_minute a minute the master counts the meter's beats, at beats_per_minute x beat_type
// / 4 quarters (see tempoUnit). The JACK app (Frames, fresh bar/beat/tick every block) sums what the
// bar/beat/tick and the frame advanced over each rolling block that follows on from the last one, while the
// tempo and meter stay: a locate, or a cycle that JACK's dummy driver repeats or skips under load, adds
// nothing and loses nothing. In LV2 only blocks that may carry a host event count (as for TimelineFollower),
// measured from bar 1 at frame 0: DPF 1.6 sums bar/beat between events at beats_per_minute meter beats a
// minute, so its sums would only repeat that guess; jalv sends an event when the transport starts, stops,
// locates or a JACK cycle comes late, so a roll from frame 0 tells nothing until one of those. Until told, a host's value is read as quarters (what Ardour writes); with beat_type 4 both
// readings are one. A told unit stays until another interval tells otherwise.
enum class TempoUnit { Unknown, MeterBeats, Quarters };

// The rule, once: `beats` of the meter advanced over `frames` frames at `rate` against a master's
// beats per minute `bpm` at beat type `beatType`. Unknown for less than a quarter of a beat (a whole tick
// is up to 1/480 of it) or fewer than `minFrames` frames (16 blocks: a late JACK cycle moves it by less
// than 1/16), for beat type 4 (both read the same), and where neither rate lies within 1/8 (they differ
// twice at least).
TempoUnit tempoUnit(double beats, double frames, double minFrames, double bpm, double beatType,
                    double rate) noexcept;

class TempoReader {
public:
    // The host's tempo in quarter notes a minute as an exact rational, for this block ([audio]: no
    // allocation, no lock); false (`out` untouched) where tempoFromHost refuses it.
    bool read(HostFormat format, const HostPosition& pos, uint32_t rate, uint32_t frames, Tempo& out) noexcept;
    TempoUnit unit() const noexcept { return fUnit; }
    // Whether the last block's tempo is sure: VST3, CLAP, beat type 4, or the unit told.
    bool sure() const noexcept { return fSure; }

private:
    TempoUnit fUnit = TempoUnit::Unknown;
    bool fSure = true, fAnchored = false, fLastPlaying = false;
    uint64_t fLastFrame = 0;
    uint32_t fLastFrames = 0;
    double fLastBeats = 0, fSumBeats = 0, fSumFrames = 0, fAnchorBpm = 0, fAnchorPerBar = 0, fAnchorType = 0;
};

// Where each block lies on the timeline (bar 1 = sample 0), from the host's frame and its bar/beat/tick.
// The origin (the frame of bar 1) is 0 unless kOriginBlocks blocks in a row put it elsewhere by more than
// 2 ms. In LV2 only blocks that may carry a host event vote: the first, those while stopped or starting,
// and those whose frame did not advance by the previous block's length (a locate, a late JACK cycle).
// Where the frame advanced as it should, a bar/beat that disagrees is not news: it is DPF 1.6's sum from
// the last event, which moves its bar number one block early at every bar line and carries on whatever
// that event said (jalv sends one only when the frame jumps, and JACK's dummy driver under load can give
// a cycle whose frame and bar/beat are one cycle apart). The frame, the host's sample position, wins.
// An LV2 host's first event sets the origin at once (it may come while the host plays on).
// In CLAP DPF's frame is a running clock, so the position comes from the beats, held to the sample while
// the host plays on.
class TimelineFollower {
public:
    static constexpr int32_t kOriginBlocks = 4;

    // The timeline sample of this block's first frame ([audio]: no allocation, no lock).
    // With `tempoSure` false (a JACK master's tempo unit not told yet: the grid's tempo may be twice the
    // master's) no block votes for a new origin.
    int64_t follow(HostFormat format, const HostPosition& pos, const BarGrid& grid, uint32_t frames,
                   bool tempoSure = true) noexcept;
    int64_t origin() const noexcept { return fOrigin; }

private:
    int64_t fOrigin = 0, fNewOrigin = 0, fLastTs = 0;
    uint64_t fLastFrame = 0;
    int32_t fVotes = 0;
    uint32_t fLastFrames = 0;
    bool fLastPlaying = false, fSeenBbt = false;
};

}  // namespace stemd

#endif
