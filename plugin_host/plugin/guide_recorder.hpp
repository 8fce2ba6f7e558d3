// A guide played into the plugin's MIDI input, as `stemd bridge --guide-in` records one (bridge/guide_in.py).
//
// Armed, a recording starts on the first bar line at or after the first block that plays, and ends
// `bars` bars later, on the host's bars. run() hands each block and its MIDI events over; an event keeps
// its exact timeline sample (nothing is quantised) in a buffer allocated when the recorder is made. The
// worker then turns the events into notes and a Standard MIDI File: type 1, 960 ticks per quarter, the
// tempo and meter of the recording's grid, each note's ticks from the first bar line, rounded once. A note
// still held at the last bar line is cut there; one released before the first bar line is dropped; one
// started within half a tick before the first bar line starts on it.
//
// Threads: block(), event() and endBlock() are the audio thread's (no allocation, lock or system call);
// arm(), stop(), the readers and finish() the worker's. The phase (an atomic) says whose the events are:
// the audio thread's while Armed or Recording, the worker's once Done or Stopped, until finish().
#ifndef STEMD_GUIDE_RECORDER_HPP
#define STEMD_GUIDE_RECORDER_HPP

#include "transport.hpp"

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace stemd {

constexpr int32_t kGuideMaxNotes = 4096;         // as the daemon's guides (stemd.guides.notes.MAX_NOTES)
constexpr int32_t kGuideTicksPerQuarter = 960;   // 1/96 quarter is 10 ticks
constexpr size_t kGuideMaxEvents = 16384;        // note-ons, note-offs and program changes of one recording

struct GuideNote {
    int64_t on = 0, off = 0;   // ticks from the first bar line
    uint8_t channel = 0, program = 0, pitch = 0, velocity = 0;
};

// A finished recording.
struct RecordedGuide {
    std::vector<GuideNote> notes;  // by start, then pitch
    std::string smf;               // the Standard MIDI File's bytes
    int32_t fromBar = 0;           // 0-based
    int32_t bars = 0;
    Tempo tempo;
    Meter meter;
};

class GuideRecorder {
public:
    enum class Phase : int32_t { Idle, Armed, Recording, Done, Stopped };
    // why a recording stopped before its last bar line
    enum class Why : int32_t { None, Cancelled, TransportStopped, Jumped, GridChanged, TooManyNotes };

    GuideRecorder();

    // ---- worker ----
    // Idle -> Armed, for `bars` bars (1..64); false when a recording is armed or running.
    bool arm(int32_t bars) noexcept;
    // Armed -> Idle at once; a running recording stops at its next block (Stopped, Cancelled).
    void stop() noexcept;
    Phase phase() const noexcept { return static_cast<Phase>(fPhase.load(std::memory_order_acquire)); }
    Why why() const noexcept { return static_cast<Why>(fWhy.load(std::memory_order_acquire)); }
    int32_t bars() const noexcept { return fBars.load(std::memory_order_relaxed); }
    int32_t fromBar() const noexcept { return fFromBar.load(std::memory_order_relaxed); }  // once Recording
    int32_t barsDone() const noexcept { return fBarsDone.load(std::memory_order_relaxed); }
    // Done: the guide (false with `error` when no note was played in its bars); Done or Stopped: back to
    // Idle. Call only in those phases.
    bool finish(RecordedGuide& out, std::string& error);

    // ---- [audio] ----
    // The block of `frames` frames starting at timeline sample `ts`, on `grid`. Returns whether this
    // block's events belong to the recorder (armed or recording): then they are not the plugin's
    // triggers. `tempoSure`: whether the grid's tempo is known (TempoReader::sure). A recording begun on
    // a tempo not yet sure that changes when it becomes sure (a JACK master counting the meter's beats,
    // told within the roll's first blocks) begins again on the next bar line of the tempo told; any other
    // change of tempo, meter or rate stops it.
    bool block(const BarGrid& grid, int64_t ts, uint32_t frames, bool playing, bool tempoSure = true) noexcept;
    // One MIDI event at frame `frame` of the block (after block()).
    void event(uint32_t frame, const uint8_t* data, uint32_t size) noexcept;
    // After the block's events: the recording ends once the block reaches its last bar line.
    void endBlock() noexcept;

private:
    struct Event {
        int64_t sample;
        uint8_t status, data1, data2;
    };
    void stopNow(Why why) noexcept;
    void begin(const BarGrid& grid, int64_t ts, bool tempoSure) noexcept;

    std::unique_ptr<Event[]> fEvents;
    size_t fCount = 0;
    int32_t fNoteOns = 0;
    BarGrid fGrid;
    int64_t fStart = 0, fEnd = 0, fBlockTs = 0, fNextTs = 0;
    uint32_t fBlockFrames = 0;
    bool fBegunUnsure = false;
    std::atomic<int32_t> fPhase{0}, fWhy{0}, fBars{4}, fFromBar{0}, fBarsDone{0};
    std::atomic<bool> fStopAsked{false};
};

// The notes as a Standard MIDI File, byte for byte what stemd.guides.smf.write_smf writes for them (type 1:
// a track with the tempo and meter, a track of notes with a program change before a channel's first note
// and whenever its program changes, running status).
std::string writeSmf(const std::vector<GuideNote>& notes, const Tempo& tempo, const Meter& meter);

std::string base64Encode(const std::string& bytes);
// false when `text` is not base64 (padding optional) or decodes to over `maxBytes`
bool base64Decode(const std::string& text, std::string& out, size_t maxBytes);

}  // namespace stemd

#endif
