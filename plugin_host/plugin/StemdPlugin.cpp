// The stemd plugin: DPF's Plugin subclass.
//
// Threads, and what each may touch:
//   audio thread   run() and the functions marked [audio] only: reads transport, MIDI and the takes'
//                  published buffers through atomics; pushes commands into an SPSC queue. It never
//                  allocates, locks, blocks or makes a system call.
//   network thread DaemonLink's (NET's daemon_link.cpp): the DaemonListener methods below copy each bar
//                  into memory allocated off the audio thread and publish it with a flag.
//   worker thread  fWorker: turns triggers (parameters, MIDI) into requests, writes finished takes to
//                  disk, restarts the link when the daemon's address changes, keeps the status.
//   host threads   the constructor, init*, get/setState, get/setParameterValue: setState("takes")
//                  loads a saved project's WAV files here, off the audio thread.
#include "DistrhoPlugin.hpp"
#include "DistrhoPluginUtils.hpp"

#include "daemon_link.hpp"
#include "guide_recorder.hpp"
#include "spsc.hpp"
#include "take_store.hpp"
#include "transport.hpp"
#include "ui_api.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <deque>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#if defined(__linux__)
extern "C" __attribute__((weak)) void stemd_rt_probe(int entering);
#endif

START_NAMESPACE_DISTRHO

using stemd::BarGrid;
using stemd::TakeAudio;
using stemd::TakeRecord;

namespace {

enum Param : uint32_t {
    kBars = 0, kVariations, kStartBar, kGenerate, kVariation, kAudition, kCancel,
    kConnected, kBarsReceived, kRecordGuide, kGuideBars, kParamCount
};

enum StateKey : uint32_t {
    kDaemon = 0, kToken, kPrompt, kModel, kTakesDir, kSlots, kTakes, kStatus, kKey, kOptions, kChords, kGuide,
    kStateCount
};

const char* const kStateKeys[kStateCount] = {
    "daemon", "token", "prompt", "model", "takes_dir", "slots", "takes", "status", "key", "options", "chords", "guide"};

// MIDI notes 0-11 (octave -1) are reserved for these; every other note may be a slot
enum ReservedNote : uint8_t {
    kNoteReroll = 0, kNoteNextVariation = 1, kNoteAccept = 2, kNoteCancel = 3, kNotePreviousVariation = 4,
    kNoteAudition = 5, kNoteGenerate = 6, kNoteRecordGuide = 7, kNoteClearGuide = 8, kLastReservedNote = 11
};

constexpr size_t kMaxLiveTakes = 64;                 // takes run() can play at once
constexpr uint64_t kMaxTakeBytes = 2ull << 30;       // one take's audio, all variations
constexpr int32_t kContinuationSeconds = 30;         // an extend sends at most this much of the take's end
constexpr size_t kMaxStateText = 4u << 20;           // a `takes` or `slots` state we accept
constexpr size_t kMaxGuideBytes = 1u << 20;          // a guide SMF (the daemon's limit)

std::string envOr(const char* name, const std::string& fallback)
{
    const char* value = std::getenv(name);
    return value && *value ? std::string(value) : fallback;
}

std::string defaultTakesDir()
{
    const std::string home = envOr("HOME", envOr("USERPROFILE", "."));
    return envOr("STEMD_TAKES_DIR", home + "/stemd-takes");
}

// The time now in UTC, as strftime formats it
std::string utcNow(const char* format = "%Y-%m-%dT%H:%M:%S+00:00")
{
    const std::time_t now = std::time(nullptr);
    std::tm tm{};
#if defined(_WIN32)
    gmtime_s(&tm, &now);
#else
    gmtime_r(&now, &tm);
#endif
    char buf[40];
    std::strftime(buf, sizeof buf, format, &tm);
    return buf;
}

// "host:port" -> host, port; false when it is not one
bool splitAddress(const std::string& address, std::string& host, uint16_t& port)
{
    const size_t colon = address.rfind(':');
    if (colon == std::string::npos || colon == 0 || colon + 1 >= address.size() || address.size() > 300) return false;
    host = address.substr(0, colon);
    if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
    long value = 0;
    for (size_t i = colon + 1; i < address.size(); ++i) {
        if (address[i] < '0' || address[i] > '9' || value > 65535) return false;
        value = value * 10 + (address[i] - '0');
    }
    if (value < 1 || value > 65535) return false;
    port = static_cast<uint16_t>(value);
    return true;
}

std::string trimmed(const std::string& text)
{
    const size_t first = text.find_first_not_of(" \t\r\n");
    if (first == std::string::npos) return std::string();
    return text.substr(first, text.find_last_not_of(" \t\r\n") - first + 1);
}

// `value` rounded to a whole number within [lo, hi]: a host's or a project's NaN or infinity is lo or hi
int32_t roundedIn(double value, int32_t lo, int32_t hi) noexcept
{
    if (!(value >= lo)) return lo;
    if (!(value <= hi)) return hi;
    return static_cast<int32_t>(std::lround(value));
}

// A file of at most `maxBytes`; false with `error`.
bool readSmall(const std::string& path, size_t maxBytes, std::string& out, std::string& error)
{
    std::ifstream f(path, std::ios::binary);
    if (!f) {
        error = std::strerror(errno);
        return false;
    }
    out.assign(maxBytes + 1, '\0');
    f.read(&out[0], static_cast<std::streamsize>(out.size()));
    out.resize(static_cast<size_t>(f.gcount()));
    if (out.size() > maxBytes) {
        error = "over " + std::to_string(maxBytes >> 10) + " KiB";
        return false;
    }
    return true;
}

const char* stoppedBecause(stemd::GuideRecorder::Why why)
{
    using Why = stemd::GuideRecorder::Why;
    switch (why) {
    case Why::Cancelled: return "stopped by Record";
    case Why::TransportStopped: return "the transport stopped";
    case Why::Jumped: return "the transport jumped (a locate or a loop)";
    case Why::GridChanged: return "the tempo, meter or sample rate changed";
    case Why::TooManyNotes: return "more than 4096 notes were played (a guide holds at most 4096)";
    case Why::None: break;
    }
    return "it was stopped";
}

struct RtProbe {  // the real-time probe hook (tests/rt_probe.c); absent in a normal host
    RtProbe() noexcept
    {
#if defined(__linux__)
        if (stemd_rt_probe) stemd_rt_probe(1);
#endif
    }
    ~RtProbe()
    {
#if defined(__linux__)
        if (stemd_rt_probe) stemd_rt_probe(0);
#endif
    }
    RtProbe(const RtProbe&) = delete;
    RtProbe& operator=(const RtProbe&) = delete;
};

// run() reads and writes these without a lock: they must never fall back to one
static_assert(std::atomic<float>::is_always_lock_free && std::atomic<int64_t>::is_always_lock_free &&
                  std::atomic<uint64_t>::is_always_lock_free && std::atomic<const void*>::is_always_lock_free,
              "the audio thread's atomics must be lock-free");

// What run() hands the worker: a MIDI note-on.
struct NoteCommand {
    uint8_t note;
    uint8_t velocity;
};

}  // namespace

class StemdPlugin : public Plugin, private stemd::DaemonListener, public stemd::UiApi
{
public:
    StemdPlugin()
        : Plugin(kParamCount, 0, kStateCount),
          fLink(*this)
    {
        fStates[kDaemon] = envOr("STEMD_DAEMON", "127.0.0.1:9130");
        fStates[kTakesDir] = defaultTakesDir();
        fStates[kSlots] = "{}";
        fStates[kTakes] = "[]";
        for (auto& slot : fLive) slot.store(nullptr, std::memory_order_relaxed);

        const char* format = getPluginFormatName();
        fFormat = std::strcmp(format, "VST3") == 0 ? stemd::HostFormat::Vst3
                : std::strcmp(format, "CLAP") == 0 ? stemd::HostFormat::Clap
                : std::strcmp(format, "LV2") == 0 ? stemd::HostFormat::Lv2 : stemd::HostFormat::Frames;
        fGrid = BarGrid(stemd::Tempo{}, stemd::Meter{}, hostRate());

        if (isDummyInstance()) return;  // DPF's instance for reading what the plugin is: no threads
        std::random_device rd;
        fIdPrefix = std::to_string(rd() % 1000000u);
        fLinkDirty = true;
        fWorker = std::thread([this] { workerLoop(); });
    }

    ~StemdPlugin() override
    {
        fLink.stop();
        {
            const std::lock_guard<std::mutex> lock(fMutex);
            fQuit = true;
        }
        fWake.notify_all();
        if (fWorker.joinable()) fWorker.join();
        for (auto& slot : fLive) slot.store(nullptr, std::memory_order_relaxed);
    }

protected:
    // ---- information ---------------------------------------------------------------------------------
    const char* getLabel() const override { return "stemd"; }
    const char* getDescription() const override
    {
        return "Asks a stemd daemon for takes at the host's tempo, meter and bar, and plays them on their bars.";
    }
    const char* getMaker() const override { return "stemd"; }
    const char* getHomePage() const override { return "https://github.com/stemd/stemd"; }
    const char* getLicense() const override { return "MIT"; }
    uint32_t getVersion() const override { return d_version(0, 1, 0); }
    int64_t getUniqueId() const override { return d_cconst('s', 't', 'm', 'd'); }

    void initAudioPort(bool input, uint32_t index, AudioPort& port) override
    {
        port.groupId = kPortGroupStereo;
        Plugin::initAudioPort(input, index, port);
    }

    void initParameter(uint32_t index, Parameter& p) override
    {
        p.hints = kParameterIsAutomatable;
        switch (index) {
        case kBars: setRange(p, "Bars", "bars", 1, 64, 4, kParameterIsInteger); break;
        case kVariations: setRange(p, "Variations", "variations", 1, 16, 1, kParameterIsInteger); break;
        case kStartBar:
            setRange(p, "Start bar (0 = next bar line)", "start_bar", 0, 9999, 0, kParameterIsInteger);
            break;
        case kGenerate: setRange(p, "Generate", "generate", 0, 1, 0, kParameterIsBoolean); break;
        case kVariation: setRange(p, "Variation", "variation", 1, 16, 1, kParameterIsInteger); break;
        case kAudition: setRange(p, "Audition", "audition", 0, 1, 0, kParameterIsBoolean); break;
        case kCancel: setRange(p, "Cancel", "cancel", 0, 1, 0, kParameterIsBoolean); break;
        case kConnected:
            p.hints = 0;
            setRange(p, "Connected", "connected", 0, 1, 0, kParameterIsOutput | kParameterIsBoolean);
            break;
        case kBarsReceived:
            p.hints = 0;
            setRange(p, "Bars received", "bars_received", 0, 4096, 0, kParameterIsOutput | kParameterIsInteger);
            break;
        case kRecordGuide: setRange(p, "Record guide", "record_guide", 0, 1, 0, kParameterIsBoolean); break;
        case kGuideBars: setRange(p, "Guide bars", "guide_bars", 1, 64, 4, kParameterIsInteger); break;
        }
    }

    void initState(uint32_t index, State& state) override
    {
        if (index >= kStateCount) return;
        state.key = kStateKeys[index];
        state.label = kStateKeys[index];
        state.defaultValue = index == kTakes ? "[]" : index == kStatus ? "" : fStates[index].c_str();
        state.hints = index == kStatus ? kStateIsHostReadable | kStateIsOnlyForDSP : kStateIsHostWritable;
    }

    // ---- parameters (may be called from the audio thread: atomics only) ---------------------------------
    float getParameterValue(uint32_t index) const override
    {
        return index < kParamCount ? fParams[index].load(std::memory_order_relaxed) : 0.0f;
    }

    void setParameterValue(uint32_t index, float value) override
    {
        if (index >= kParamCount || index == kConnected || index == kBarsReceived) return;
        if (index == kGenerate || index == kAudition || index == kCancel || index == kRecordGuide) {
            // fires once as the host's value rises to 0.5 or above: DPF 1.6 hands no host change of a
            // kParameterIsTrigger parameter to the plugin in VST3 and CLAP, so these are plain switches.
            // An LV2 host keeps the port's value and restores it with the project: DPF hands it over
            // before the first run(), and a switch saved high is where it was left, not a press
            const bool high = value >= 0.5f;
            const bool restored = fFormat == stemd::HostFormat::Lv2 && !fRan.load(std::memory_order_acquire);
            if (high != fTriggerHigh[index].exchange(high) && high && !restored)
                fTriggers[index].fetch_add(1, std::memory_order_release);
            fParams[index].store(0.0f, std::memory_order_relaxed);  // a trigger reads back 0
            return;
        }
        fParams[index].store(value, std::memory_order_relaxed);
    }

    // ---- state (host threads) -----------------------------------------------------------------------------
    String getState(const char* key) const override
    {
        const std::lock_guard<std::mutex> lock(fMutex);
        if (std::strcmp(key, "takes") == 0) return String(stemd::takesToJson(fTakes).c_str());
        if (std::strcmp(key, "status") == 0) return String(statusLocked().c_str());
        for (uint32_t i = 0; i < kStateCount; ++i)
            if (std::strcmp(key, kStateKeys[i]) == 0) return String(fStates[i].c_str());
        return String();
    }

    void setState(const char* key, const char* value) override
    {
        const std::string text = value ? value : "";
        if (std::strcmp(key, "takes") == 0) {
            loadTakes(text);
            return;
        }
        if (std::strcmp(key, "guide") == 0) {
            loadGuide(text);
            return;
        }
        const std::lock_guard<std::mutex> lock(fMutex);
        for (uint32_t i = 0; i < kStateCount; ++i) {
            if (std::strcmp(key, kStateKeys[i]) != 0 || i == kStatus || i == kTakes || i == kGuide) continue;
            if (text.size() > kMaxStateText) {
                fLastError = std::string("state ") + key + " over 4 MiB: ignored";
                return;
            }
            if (i == kSlots) {
                stemd::Json slots;
                std::string error;
                if (!text.empty() && (!stemd::parseJson(text, slots, error) || slots.type != stemd::Json::Type::Object)) {
                    fLastError = "slots: not a JSON object (" + error + "): kept the previous slots";
                    return;
                }
            }
            if ((i == kDaemon || i == kToken) && fStates[i] != text) fLinkDirty = true;
            fStates[i] = text;
        }
        fWake.notify_all();
    }

    // ---- [audio] the audio callback -------------------------------------------------------------------------
    void run(const float**, float** outputs, uint32_t frames, const MidiEvent* midi, uint32_t midiCount) override
    {
        const RtProbe probe;
        fRunSeq.fetch_add(1, std::memory_order_acq_rel);  // odd: run() is reading published takes
        std::atomic_thread_fence(std::memory_order_seq_cst);  // pairs with waitForRun's: see there

        float* left = outputs[0];
        float* right = outputs[1];
        const TimePosition& pos = getTimePosition();
        const uint32_t rate = hostRate();
        const int64_t ts = followTransport(pos, rate, frames);
        const bool playing = pos.playing;

        // MIDI: notes 0-11 are the plugin's controls; while a guide is armed or recording, the rest are the
        // guide's (with program changes), else notes 12-127 fire slots
        const bool guiding = fGuideRecorder.block(fGrid, ts, frames, playing, fTempoReader.sure());
        for (uint32_t i = 0; i < midiCount; ++i) {
            const MidiEvent& ev = midi[i];
            if (ev.size < 2 || ev.size > MidiEvent::kDataSize) continue;
            const bool note = (ev.data[0] & 0xE0) == 0x80;  // note off or on
            const bool control = note && ev.data[1] <= kLastReservedNote;
            if (note && ev.size >= 3 && (ev.data[0] & 0xF0) == 0x90 && ev.data[2] > 0 && (control || !guiding))
                fNotes.push(NoteCommand{static_cast<uint8_t>(ev.data[1] & 0x7F), ev.data[2]});
            if (guiding && !control) fGuideRecorder.event(ev.frame, ev.data, ev.size);
        }
        fGuideRecorder.endBlock();

        // the takes that can sound now: published, at this rate; newest first
        const TakeAudio* takes[kMaxLiveTakes];
        size_t count = 0;
        for (auto& slot : fLive) {
            const TakeAudio* take = slot.load(std::memory_order_acquire);
            if (!take || take->sampleRate() != rate) continue;
            size_t j = count++;
            while (j > 0 && takes[j - 1]->serial() < take->serial()) {
                takes[j] = takes[j - 1];
                --j;
            }
            takes[j] = take;
        }

        // audition: the selected take from its start at the next bar line of a free-running clock
        if (fAuditionSeen != fTriggers[kAudition].load(std::memory_order_acquire)) {
            fAuditionSeen = fTriggers[kAudition].load(std::memory_order_acquire);
            if (!playing) {
                fAuditionTake = fSelected.load(std::memory_order_acquire);
                fAuditionStart = fGrid.barStart(fGrid.barLineFrom(fFreeClock, false));
            }
        }
        if (playing) fAuditionTake = 0;

        for (uint32_t i = 0; i < frames; ++i) {
            float l = 0.0f, r = 0.0f;
            if (playing) {
                const int64_t t = ts + static_cast<int64_t>(i);
                for (size_t k = 0; k < count; ++k) {
                    const int64_t offset = t - takes[k]->startSample();
                    if (offset < 0 || offset >= takes[k]->frames() || !takes[k]->enabled.load(std::memory_order_relaxed))
                        continue;
                    takes[k]->frameAt(offset, l, r);
                    break;
                }
            } else if (fAuditionTake != 0) {
                const int64_t offset = fFreeClock + static_cast<int64_t>(i) - fAuditionStart;
                for (size_t k = 0; k < count && offset >= 0; ++k) {
                    if (takes[k]->serial() != fAuditionTake) continue;
                    if (offset >= takes[k]->frames()) fAuditionTake = 0;
                    else takes[k]->frameAt(offset, l, r);
                    break;
                }
            }
            left[i] = l;
            right[i] = r;
        }
        fFreeClock += frames;
        fShownAudition.store(fAuditionTake, std::memory_order_relaxed);  // the window's playhead (ui_access.inc)
        fShownAuditionAt.store(fFreeClock - fAuditionStart, std::memory_order_relaxed);
        fRan.store(true, std::memory_order_release);
        fRunSeq.fetch_add(1, std::memory_order_acq_rel);  // even: done reading
    }

private:
    static void setRange(Parameter& p, const char* name, const char* symbol, float min, float max, float def,
                         uint32_t hints)
    {
        p.name = name;
        p.symbol = symbol;
        p.ranges.min = min;
        p.ranges.max = max;
        p.ranges.def = def;
        p.hints |= hints;
    }

    uint32_t hostRate() const noexcept
    {
        const double rate = getSampleRate();
        return rate >= 1000 && rate <= 768000 ? static_cast<uint32_t>(rate + 0.5) : 48000u;
    }

    // [audio] The timeline sample (bar 1 = 0) of this block's first frame; keeps fGrid at the host's tempo
    // and meter and publishes a snapshot for the worker.
    int64_t followTransport(const TimePosition& pos, uint32_t rate, uint32_t frames) noexcept
    {
        stemd::HostPosition host;
        host.playing = pos.playing;
        host.frame = pos.frame;
        host.bbtValid = pos.bbt.valid;
        host.bar = pos.bbt.bar;
        host.beat = pos.bbt.beat;
        host.tick = pos.bbt.tick;
        host.ticksPerBeat = pos.bbt.ticksPerBeat;
        host.beatsPerBar = pos.bbt.beatsPerBar;
        host.beatType = pos.bbt.beatType;
        host.beatsPerMinute = pos.bbt.beatsPerMinute;

        stemd::Tempo tempo = fGrid.tempo();
        stemd::Meter meter = fGrid.meter();
        stemd::Tempo t;
        const bool told = fTempoReader.read(fFormat, host, rate, frames, t);   // in quarters, whatever the host counts
        if (pos.bbt.valid) {
            stemd::Meter m;
            if (told) tempo = t;
            if (stemd::meterFromHost(pos.bbt.beatsPerBar, pos.bbt.beatType, m)) meter = m;
        }
        if (tempo.num != fGrid.tempo().num || tempo.den != fGrid.tempo().den ||
            meter.numerator != fGrid.meter().numerator || meter.denominator != fGrid.meter().denominator ||
            rate != fGrid.sampleRate())
            fGrid = BarGrid(tempo, meter, rate);

        const int64_t ts = fTimeline.follow(fFormat, host, fGrid, frames, !pos.bbt.valid || fTempoReader.sure());

        fSnapSeq.fetch_add(1, std::memory_order_acq_rel);
        fSnapTs.store(ts, std::memory_order_relaxed);
        fSnapPlaying.store(pos.playing, std::memory_order_relaxed);
        fSnapTempoNum.store(fGrid.tempo().num, std::memory_order_relaxed);
        fSnapTempoDen.store(fGrid.tempo().den, std::memory_order_relaxed);
        fSnapMeter.store(fGrid.meter().numerator * 64 + fGrid.meter().denominator, std::memory_order_relaxed);
        fSnapRate.store(rate, std::memory_order_relaxed);
        fSnapSeq.fetch_add(1, std::memory_order_acq_rel);
        fSnapValid.store(true, std::memory_order_release);
        return ts;
    }

    // ---- the worker thread ----------------------------------------------------------------------------------
    struct Snapshot {
        bool valid = false;
        bool playing = false;
        int64_t ts = 0;
        stemd::Tempo tempo;
        stemd::Meter meter;
        uint32_t rate = 48000;
    };

    // a parameter's value as a whole number within [lo, hi] (any thread)
    int32_t intParam(uint32_t index, int32_t lo, int32_t hi) const noexcept
    {
        return roundedIn(fParams[index].load(std::memory_order_relaxed), lo, hi);
    }

    Snapshot snapshot() const
    {
        Snapshot s;
        if (!fSnapValid.load(std::memory_order_acquire)) return s;
        for (int tries = 0; tries < 100; ++tries) {
            const uint32_t before = fSnapSeq.load(std::memory_order_acquire);
            if (before % 2) continue;
            s.ts = fSnapTs.load(std::memory_order_relaxed);
            s.playing = fSnapPlaying.load(std::memory_order_relaxed);
            s.tempo.num = fSnapTempoNum.load(std::memory_order_relaxed);
            s.tempo.den = fSnapTempoDen.load(std::memory_order_relaxed);
            const int32_t m = fSnapMeter.load(std::memory_order_relaxed);
            s.meter.numerator = m / 64;
            s.meter.denominator = m % 64;
            s.rate = fSnapRate.load(std::memory_order_relaxed);
            std::atomic_thread_fence(std::memory_order_acquire);  // the reads above before the check below
            if (fSnapSeq.load(std::memory_order_relaxed) == before) {
                s.valid = true;
                break;
            }
        }
        return s;
    }

    void workerLoop()
    {
        uint32_t seen[kParamCount] = {};
        float lastVariation = fParams[kVariation].load();
        std::unique_lock<std::mutex> lock(fMutex);
        while (!fQuit) {
            fWake.wait_for(lock, std::chrono::milliseconds(5));
            if (fQuit) break;
            if (fLinkDirty) {
                fLinkDirty = false;
                const std::string address = fStates[kDaemon], token = fStates[kToken];
                lock.unlock();
                restartLink(address, token);
                lock.lock();
            }
            // parameters and notes become actions
            std::vector<uint8_t> notes;
            for (NoteCommand note{}; fNotes.pop(note);) notes.push_back(note.note);
            const uint32_t generate = fTriggers[kGenerate].load(std::memory_order_acquire);
            const uint32_t cancel = fTriggers[kCancel].load(std::memory_order_acquire);
            const uint32_t record = fTriggers[kRecordGuide].load(std::memory_order_acquire);
            const float variation = fParams[kVariation].load(std::memory_order_relaxed);
            lock.unlock();
            if (record != seen[kRecordGuide]) {
                seen[kRecordGuide] = record;
                toggleGuideRecording();
            }
            if (generate != seen[kGenerate] && fSnapValid.load()) {  // waits for run() to have seen the transport
                seen[kGenerate] = generate;
                generateFromParameters();
            }
            if (cancel != seen[kCancel]) {
                seen[kCancel] = cancel;
                cancelSelected();
            }
            if (variation != lastVariation) {
                lastVariation = variation;
                chooseVariation(roundedIn(variation, 0, 16) - 1, false);
            }
            for (const uint8_t note : notes) onNote(note);
            uiRunActions();
            collectGuide();
            writeFinishedTakes();
            conformRates();
            lock.lock();
            publishOutputsLocked();
        }
    }

    void restartLink(const std::string& address, const std::string& token)
    {
        std::string host;
        uint16_t port = 0;
        fLink.stop();
        if (!splitAddress(address, host, port)) {
            const std::lock_guard<std::mutex> lock(fMutex);
            fConnection = "no daemon: '" + address.substr(0, 80) + "' is not host:port";
            return;
        }
        fLink.start(host, port, token);
    }

    void generateFromParameters()
    {
        std::string prompt, model;
        {
            const std::lock_guard<std::mutex> lock(fMutex);
            prompt = fStates[kPrompt];
            model = fStates[kModel];
        }
        const int32_t bars = intParam(kBars, 1, 64);
        const int32_t variations = intParam(kVariations, 1, 16);
        const int32_t startBar = intParam(kStartBar, 0, 9999);
        generate(prompt, model, bars, variations, startBar - 1);
    }

    // A request for `bars` bars from `startBar` (0-based; < 0: the next bar line), at the host's tempo,
    // meter and rate as run() last saw them. `like`: a re-roll's take, whose key and family keys the
    // request repeats (else the window's current ones), and its guide when it is not extended.
    // `continuation`: audio at `continuationRate` (stereo interleaved) the take continues from (extend).
    // The guide: the recorded one (the `guide` state), else the `chords` state; a re-roll repeats its take's.
    void generate(const std::string& prompt, const std::string& model, int32_t bars, int32_t variations,
                  int32_t startBar, const TakeRecord* like = nullptr,
                  std::shared_ptr<const std::vector<float>> continuation = nullptr, uint32_t continuationRate = 0)
    {
        const Snapshot snap = snapshot();
        const BarGrid grid(snap.tempo, snap.meter, snap.rate);
        if (startBar < 0) startBar = static_cast<int32_t>(std::min<int64_t>(grid.barLineFrom(snap.ts, !snap.playing), 100000));
        char bpm[48];
        stemd::Request request;
        request.id = "plugin-" + fIdPrefix + "-" + std::to_string(++fRequestCount);
        request.prompt = prompt;
        request.model = model;
        request.bars = bars;
        request.variations = variations;
        request.bpm = stemd::tempoText(grid.tempo(), bpm, sizeof bpm);
        request.meter = std::to_string(grid.meter().numerator) + "/" + std::to_string(grid.meter().denominator);
        request.start_bar = startBar;
        request.sample_rate = static_cast<int32_t>(grid.sampleRate());
        request.channels = 2;
        if (continuation) {
            request.continuation = std::move(continuation);
            request.continuation_rate = static_cast<int32_t>(continuationRate);
            request.continuation_channels = 2;
        }
        std::string options, guideFile;
        {
            const std::lock_guard<std::mutex> lock(fMutex);
            options = uiRequestKeys(request, like);  // key, steps, guidance, strength, temperature (ui_access.inc)
            if (like && !request.continuation) {
                request.guide = like->guide;
                request.chords = like->chords;
                guideFile = like->guideFile;
            } else {
                request.guide = fGuide;
                if (!fGuide) request.chords = trimmed(fStates[kChords]);
            }
        }
        std::string guideError;
        if (!request.guide && !guideFile.empty()) {  // a take reopened from a project: its guide is its file
            std::string bytes;
            if (readSmall(guideFile, kMaxGuideBytes, bytes, guideError))
                request.guide = std::make_shared<const std::vector<uint8_t>>(bytes.begin(), bytes.end());
            else
                guideError = "its guide, " + guideFile + ", cannot be read: " + guideError;
        }

        TakeRecord take;
        take.id = request.id;
        take.prompt = prompt;
        take.model = model;
        take.bpm = request.bpm;
        take.meter = request.meter;
        take.key = request.key;
        take.options = options;
        take.chords = request.chords;
        take.guide = request.guide;
        take.startBar = startBar;
        take.bars = bars;
        take.variations = variations;
        take.sampleRate = grid.sampleRate();
        take.startSample = grid.barStart(startBar);
        take.files.resize(static_cast<size_t>(variations));
        const uint64_t bytes = static_cast<uint64_t>(grid.barStart(startBar + bars) - take.startSample) * 8u *
                               static_cast<uint64_t>(variations);
        if (bytes > kMaxTakeBytes) {
            take.state = "failed";
            take.errorCode = "too_large";
            take.errorMessage = "the take would need " + std::to_string(bytes >> 20) + " MiB in memory (at most 2048)";
        } else {
            take.audio = std::make_shared<TakeAudio>(fSerial.fetch_add(1) + 1, take.startSample, grid, startBar, bars, variations);
        }
        const std::string error = guideError.empty() ? stemd::validate_request(request) : guideError;
        if (!error.empty() && take.errorCode.empty()) {
            take.state = "failed";
            take.errorCode = "bad_request";
            take.errorMessage = error;
        }
        const bool send = take.errorCode.empty();
        addTake(std::move(take));
        if (!send) return;
        const stemd::SendResult sent = fLink.send_generate(request);
        if (sent != stemd::SendResult::Queued)
            onError(request.id, sent == stemd::SendResult::NotStarted ? "not_connected" : "bad_request",
                    sent == stemd::SendResult::NotStarted ? "the link to the daemon is not running"
                                                          : stemd::validate_request(request));
    }

    // Keeps `take`, publishes its audio to run() and selects it.
    void addTake(TakeRecord take)
    {
        const std::lock_guard<std::mutex> lock(fMutex);
        if (!take.errorCode.empty()) fLastError = "take " + take.id + ": " + take.errorCode + ": " + take.errorMessage;
        if (take.audio) {
            publishLocked(take.audio.get());
            fSelected.store(take.audio->serial(), std::memory_order_release);
        }
        fTakes.push_back(std::move(take));
    }

    void publishLocked(TakeAudio* audio)
    {
        for (auto& slot : fLive)
            if (!slot.load(std::memory_order_relaxed)) {
                slot.store(audio, std::memory_order_release);
                return;
            }
        // full: the oldest published take makes room (its record and files stay)
        size_t oldest = 0;
        for (size_t i = 1; i < kMaxLiveTakes; ++i)
            if (fLive[i].load()->serial() < fLive[oldest].load()->serial()) oldest = i;
        fLive[oldest].store(audio, std::memory_order_release);
        waitForRun();
    }

    // After a take leaves fLive: returns once run() cannot still be reading it. The two fences (here after
    // the slots were cleared, in run() after it marked itself running) make one side see the other: run()
    // then reads the cleared slot, or this sees run() running and waits. Without them a store still in
    // this core's buffer could let both miss, and a take's memory go while run() reads it.
    void waitForRun() const
    {
        std::atomic_thread_fence(std::memory_order_seq_cst);
        const uint64_t seq = fRunSeq.load(std::memory_order_acquire);
        if (seq % 2 == 0) return;
        for (int i = 0; i < 2000 && fRunSeq.load(std::memory_order_acquire) == seq; ++i)
            std::this_thread::sleep_for(std::chrono::microseconds(500));
    }

    TakeRecord* selectedLocked()
    {
        const uint64_t serial = fSelected.load(std::memory_order_acquire);
        for (auto& take : fTakes)
            if (take.audio && take.audio->serial() == serial) return &take;
        return fTakes.empty() ? nullptr : &fTakes.back();
    }

    TakeRecord* findLocked(const std::string& id)
    {
        for (auto& take : fTakes)
            if (take.id == id) return &take;
        return nullptr;
    }

    static bool inFlight(const TakeRecord& take)
    {
        return take.state == "requested" || take.state == "accepted" || take.state == "queued" ||
               take.state == "streaming" || take.state == "cancelling";
    }

    void cancelSelected()
    {
        std::string id;
        {
            const std::lock_guard<std::mutex> lock(fMutex);
            TakeRecord* take = selectedLocked();
            if (!take || !inFlight(*take)) return;
            take->state = "cancelling";
            id = take->id;
        }
        fLink.cancel(id);
    }

    void chooseVariation(int32_t variation, bool step)
    {
        const std::lock_guard<std::mutex> lock(fMutex);
        TakeRecord* take = selectedLocked();
        if (!take || !take->audio || take->variations < 1) return;
        if (step) {
            if (take->accepted && take->variations > 1) {
                fLastError = "take " + take->id + " is accepted as variation " + std::to_string(take->chosen + 1) +
                             ": re-roll it to choose again";
                return;
            }
            variation = ((take->chosen + variation) % take->variations + take->variations) % take->variations;
        }
        if (variation < 0 || variation >= take->variations) return;
        take->chosen = variation;
        take->audio->chosen.store(variation, std::memory_order_release);
    }

    void onNote(uint8_t note)
    {
        if (note <= kLastReservedNote) {
            switch (note) {
            case kNoteReroll: reroll(); break;
            case kNoteNextVariation: chooseVariation(1, true); break;
            case kNotePreviousVariation: chooseVariation(-1, true); break;
            case kNoteAccept: acceptSelected(); break;
            case kNoteCancel: cancelSelected(); break;
            case kNoteAudition: fTriggers[kAudition].fetch_add(1, std::memory_order_release); break;
            case kNoteGenerate: generateFromParameters(); break;
            case kNoteRecordGuide: toggleGuideRecording(); break;
            case kNoteClearGuide: clearGuide(); break;
            default: break;
            }
            return;
        }
        std::string prompt, model;
        int32_t bars = 0;
        {
            const std::lock_guard<std::mutex> lock(fMutex);
            stemd::Json slots;
            std::string error;
            if (!stemd::parseJson(fStates[kSlots], slots, error)) return;
            const stemd::Json* slot = slots.get(std::to_string(note).c_str());
            if (!slot || slot->type != stemd::Json::Type::Object) return;
            prompt = slot->str("prompt", fStates[kPrompt]);
            model = slot->str("model", fStates[kModel]);
            bars = roundedIn(slot->num("bars", fParams[kBars].load()), 1, 64);
        }
        generate(prompt, model, bars, intParam(kVariations, 1, 16), -1);
    }

    void reroll()
    {
        TakeRecord copy;
        {
            const std::lock_guard<std::mutex> lock(fMutex);
            const TakeRecord* take = selectedLocked();
            if (!take) return;
            copy = *take;
        }
        // the take's own settings; no seed is sent, so the daemon picks a new one
        generate(copy.prompt, copy.model, copy.bars, copy.variations, copy.startBar, &copy);
    }

    // Continues the selected take's chosen variation from its end: the bar after it, with the take's prompt,
    // model, key and family keys, `bars` and `variations` (the window's settings) and a new seed. The
    // variation's last kContinuationSeconds go as the continuation, copied here (the worker), never on the
    // audio thread. A take whose chosen variation has not all arrived is not extended.
    void extendSelected(int32_t bars, int32_t variations)
    {
        TakeRecord copy;
        {
            const std::lock_guard<std::mutex> lock(fMutex);
            const TakeRecord* take = selectedLocked();
            if (!take) return;
            copy = *take;
        }
        if (!copy.audio || !copy.audio->complete(copy.chosen)) {
            const std::lock_guard<std::mutex> lock(fMutex);
            fLastError = "take " + copy.id + " cannot be extended before its variation " +
                         std::to_string(copy.chosen + 1) + " has every bar";
            return;
        }
        const TakeAudio& audio = *copy.audio;
        const int64_t frames = std::min<int64_t>(audio.frames(), int64_t(kContinuationSeconds) * audio.sampleRate());
        const float* tail = audio.variationData(copy.chosen) + (audio.frames() - frames) * 2;
        auto continuation = std::make_shared<const std::vector<float>>(tail, tail + frames * 2);
        generate(copy.prompt, copy.model, bars, variations, copy.startBar + copy.bars, &copy, std::move(continuation),
                 audio.sampleRate());
    }

    void acceptSelected()
    {
        const std::lock_guard<std::mutex> lock(fMutex);
        TakeRecord* take = selectedLocked();
        if (!take) return;
        take->accepted = true;
        for (auto& file : take->files) file.rewrite = file.written;  // their sidecars say accepted now
    }

    // ---- the guide (worker) ------------------------------------------------------------------------------------
    // Record (the record_guide switch, note 7, the window): arms the recorder for guide_bars bars; while it is
    // armed or recording, stops it.
    void toggleGuideRecording()
    {
        using Phase = stemd::GuideRecorder::Phase;
        const Phase phase = fGuideRecorder.phase();
        const std::lock_guard<std::mutex> lock(fMutex);
        if (phase == Phase::Armed || phase == Phase::Recording) {
            fGuideRecorder.stop();
            if (phase == Phase::Armed) fGuideMessage = "not recorded: stopped before it started";
            return;
        }
        if (phase != Phase::Idle) return;  // a recording just ended: collectGuide() takes it first
        const int32_t bars = intParam(kGuideBars, 1, 64);
        if (fGuideRecorder.arm(bars))
            fGuideMessage = "armed: " + std::to_string(bars) + (bars == 1 ? " bar" : " bars") +
                            " from the next bar line once the host plays";
    }

    // A recording that ended: its SMF becomes the guide (the `guide` state and a guide-*.mid file in the
    // takes folder); one stopped or empty leaves the guide as it was and says why.
    void collectGuide()
    {
        using Phase = stemd::GuideRecorder::Phase;
        const Phase phase = fGuideRecorder.phase();
        if (phase != Phase::Done && phase != Phase::Stopped) return;
        const stemd::GuideRecorder::Why why = fGuideRecorder.why();
        const int32_t from = fGuideRecorder.fromBar() + 1, bars = fGuideRecorder.bars();
        stemd::RecordedGuide guide;
        std::string error;
        if (!fGuideRecorder.finish(guide, error)) {
            const std::lock_guard<std::mutex> lock(fMutex);
            fGuideMessage = phase == Phase::Stopped
                                ? "not recorded: " + std::string(stoppedBecause(why)) + " in bars " + std::to_string(from) +
                                      "-" + std::to_string(from + bars - 1) + "; the guide is as it was"
                                : error;
            fLastError = "guide: " + fGuideMessage;
            return;
        }
        std::string folder;
        {
            const std::lock_guard<std::mutex> lock(fMutex);
            folder = fStates[kTakesDir];
        }
        std::string path;
        std::error_code ec;
        std::filesystem::create_directories(folder, ec);
        const std::string stem = (std::filesystem::path(folder) / ("guide-" + utcNow("%Y%m%d-%H%M%S"))).string();
        for (int n = 0; n < 1000; ++n) {
            path = stem + (n ? "-" + std::to_string(n) : std::string()) + ".mid";
            if (stemd::atomicWrite(path, guide.smf, error, false)) break;
            path.clear();
            if (error.compare(0, 7, "exists:") != 0) break;
        }
        char bpm[48];
        GuideInfo info;
        info.bars = guide.bars;
        info.notes = static_cast<int32_t>(guide.notes.size());
        info.fromBar = guide.fromBar;
        info.tempo = stemd::tempoText(guide.tempo, bpm, sizeof bpm);
        info.meter = std::to_string(guide.meter.numerator) + "/" + std::to_string(guide.meter.denominator);
        info.file = path;
        const std::string state = "{\"smf\": \"" + stemd::base64Encode(guide.smf) + "\", \"bars\": " +
                                  std::to_string(info.bars) + ", \"notes\": " + std::to_string(info.notes) +
                                  ", \"from_bar\": " + std::to_string(info.fromBar) + ", \"bpm\": " +
                                  stemd::jsonString(info.tempo) + ", \"meter\": " + stemd::jsonString(info.meter) +
                                  ", \"file\": " + stemd::jsonString(path) + "}";
        const std::lock_guard<std::mutex> lock(fMutex);
        fGuide = std::make_shared<const std::vector<uint8_t>>(guide.smf.begin(), guide.smf.end());
        fGuideInfo = info;
        fStates[kGuide] = state;
        fGuideMessage = "recorded " + std::to_string(info.notes) + (info.notes == 1 ? " note" : " notes") + " in bars " +
                        std::to_string(from) + "-" + std::to_string(from + bars - 1) +
                        (path.empty() ? ": its file was not written (" + error + ")" : "");
        if (path.empty()) fLastError = "guide: " + fGuideMessage;
    }

    void clearGuide()
    {
        const std::lock_guard<std::mutex> lock(fMutex);
        if (!fGuide) return;
        fGuide.reset();
        fGuideInfo = GuideInfo();
        fStates[kGuide].clear();
        fGuideMessage = "guide cleared: requests go with the chords, if any";
    }

    // The `guide` state from a saved project (host thread): "" forgets the guide.
    void loadGuide(const std::string& text)
    {
        std::shared_ptr<const std::vector<uint8_t>> smf;
        GuideInfo info;
        std::string error;
        if (!trimmed(text).empty()) {
            stemd::Json json;
            std::string bytes;
            if (text.size() > kMaxStateText || !stemd::parseJson(text, json, error) || json.type != stemd::Json::Type::Object)
                error = "not a JSON object" + (error.empty() ? std::string() : " (" + error + ")");
            else if (!stemd::base64Decode(json.str("smf"), bytes, kMaxGuideBytes) || bytes.compare(0, 4, "MThd") != 0)
                error = "its smf is not a Standard MIDI File of at most 1 MiB in base64";
            if (!error.empty()) {
                const std::lock_guard<std::mutex> lock(fMutex);
                fLastError = "guide state not read: " + error + ": the guide is as it was";
                return;
            }
            smf = std::make_shared<const std::vector<uint8_t>>(bytes.begin(), bytes.end());
            info.bars = static_cast<int32_t>(std::clamp(json.num("bars"), 0.0, 1024.0));
            info.notes = static_cast<int32_t>(std::clamp(json.num("notes"), 0.0, 1e6));
            info.fromBar = static_cast<int32_t>(std::clamp(json.num("from_bar"), 0.0, 1e6));
            info.tempo = json.str("bpm").substr(0, 32);
            info.meter = json.str("meter").substr(0, 8);
            info.file = json.str("file").substr(0, 4096);
        }
        const std::lock_guard<std::mutex> lock(fMutex);
        fGuide = std::move(smf);
        fGuideInfo = info;
        fStates[kGuide] = fGuide ? text : std::string();
    }

    // The take's MIDI guide beside its WAV as NAME.mid (NAME: the take's, without a variation), written once
    // per folder; its path, or "" when it has none or it could not be written (the sidecar then names none).
    std::string writeTakeGuide(const TakeRecord& take, const std::string& folder)
    {
        namespace fs = std::filesystem;
        if (!take.guide) return take.guideFile;
        std::error_code ec;
        const std::string path =
            fs::absolute(fs::path(folder) / (stemd::takeName(take.prompt, take.startBar, take.takeNumber, 0, false) + ".mid"), ec)
                .string();
        if (take.guideFile == path && fs::exists(path, ec)) return path;
        std::string error;
        if (stemd::atomicWrite(path, std::string(take.guide->begin(), take.guide->end()), error)) return path;
        const std::lock_guard<std::mutex> lock(fMutex);
        fLastError = "take " + take.id + ": its guide was not written: " + error;
        return std::string();
    }

    // ---- takes to disk (worker) -------------------------------------------------------------------------------
    // Writes every variation that has all its bars, or was cut off (failed, cancelled) after some, and is
    // not on disk yet, and rewrites the sidecars of takes accepted since; one file at a time, the lock
    // released while writing.
    void writeFinishedTakes()
    {
        for (;;) {
            TakeRecord copy;
            int32_t variation = -1;
            bool rewrite = false;
            std::string folder, daemon;
            {
                const std::lock_guard<std::mutex> lock(fMutex);
                for (auto& take : fTakes) {
                    if (!take.audio) continue;
                    for (size_t v = 0; v < take.files.size(); ++v) {
                        stemd::TakeFile& file = take.files[v];
                        const int32_t kept = keptBars(*take.audio, static_cast<int32_t>(v));
                        const bool cutOff = take.state == "failed" || take.state == "cancelled";
                        const bool finished = !file.written && !inFlight(take) &&
                                              (kept == take.audio->bars() || (cutOff && kept > 0));
                        if (!finished && !file.rewrite) continue;
                        rewrite = file.written;
                        file.written = true;  // claimed
                        file.rewrite = false;
                        variation = static_cast<int32_t>(v);
                        break;
                    }
                    if (variation >= 0) {
                        copy = take;
                        break;
                    }
                }
                if (variation < 0) return;
                folder = fStates[kTakesDir];
                daemon = fStates[kDaemon];
            }
            writeVariation(copy, variation, folder, daemon, rewrite);
        }
    }

    // The bars a variation's file holds: up to its last bar received (those before it not received are
    // silence); audio.bars() when every bar came.
    static int32_t keptBars(const TakeAudio& audio, int32_t variation)
    {
        for (int32_t b = audio.bars(); b > 0; --b)
            if (audio.barReady(variation, b - 1)) return b;
        return 0;
    }

    static std::string readSidecar(const std::string& path)
    {
        std::ifstream f(path, std::ios::binary);
        std::string text(1u << 20, '\0');   // the daemon's part is at most 64 KiB
        f.read(&text[0], static_cast<std::streamsize>(text.size()));
        text.resize(static_cast<size_t>(f.gcount()));
        return text;
    }

    void writeVariation(TakeRecord take, int32_t variation, const std::string& folder, const std::string& daemon,
                        bool rewrite)
    {
        namespace fs = std::filesystem;
        std::error_code ec;
        fs::create_directories(folder, ec);
        stemd::TakeFile& file = take.files[static_cast<size_t>(variation)];
        if (take.takeNumber == 0) take.takeNumber = stemd::nextTakeNumber(folder, stemd::takePrefix(take.prompt, take.startBar));
        const std::string name = stemd::takeName(take.prompt, take.startBar, take.takeNumber, variation, take.variations > 1);
        const std::string wavPath = rewrite ? file.wav : (fs::absolute(fs::path(folder) / (name + ".wav"), ec)).string();
        const std::string jsonPath = wavPath.substr(0, wavPath.size() - 4) + ".json";
        const int32_t kept = keptBars(*take.audio, variation);
        BarGrid fileGrid;  // the file's rate (the audio in memory may be resampled to the host's since)
        const int64_t frames = stemd::recordGrid(take, fileGrid)
                                   ? fileGrid.barStart(take.startBar + kept) - fileGrid.barStart(take.startBar)
                                   : take.audio->barOffset(kept);
        // a rewrite (accepted since) keeps the daemon's part and the time it came: a take reloaded from a
        // project has only its file to say what made it
        std::string received, daemonJson = file.daemonSidecar;
        if (rewrite) {
            const std::string before = stemd::daemonSidecarOf(readSidecar(jsonPath), received);
            if (daemonJson.empty()) daemonJson = before;
        }
        if (received.empty()) received = utcNow();
        const std::string guideFile = writeTakeGuide(take, folder);
        std::string partial;
        if (kept < take.bars)
            partial = ", \"partial\": {\"bars_kept\": " + std::to_string(kept) + ", \"bars\": " +
                      std::to_string(take.bars) + ", \"cut_off_by\": " +
                      stemd::jsonString(take.errorCode.empty() ? take.state : take.errorCode) + "}";
        std::string delivery = "{\"client\": \"stemd plugin\", \"daemon\": " + stemd::jsonString(daemon) +
                               ", \"take_id\": " + stemd::jsonString(take.id) +
                               ", \"file\": " + stemd::jsonString(fs::path(wavPath).filename().string()) +
                               ", \"daw_bar\": " + std::to_string(take.startBar + 1) +
                               ", \"start_sample\": " + std::to_string(take.startSample) +
                               ", \"sample_rate\": " + std::to_string(take.sampleRate) +
                               ", \"channels\": 2, \"frames\": " + std::to_string(frames) +
                               ", \"format\": \"float32\", \"accepted\": " + (take.accepted ? "true" : "false") +
                               ", \"received\": " + stemd::jsonString(received) + partial;
        if (!guideFile.empty()) delivery += ", \"guide_file\": " + stemd::jsonString(fs::path(guideFile).filename().string());
        std::string sidecar = daemonJson.empty() ? "" : stemd::sidecarWithDelivery(daemonJson, delivery + "}");
        const bool missing = sidecar.empty();
        if (missing)
            sidecar = "{\n  \"delivery\": " + delivery + ", \"missing\": " +
                      stemd::jsonString(daemonJson.empty()
                                            ? (partial.empty() ? "the daemon sent no sidecar for this take: what made it is not known"
                                                               : "the take was cut off before the daemon sent its sidecar: what made it is not known")
                                            : "the daemon's sidecar for this take was not a stemd sidecar: what made it is not known") +
                      "}\n}\n";
        std::string error;
        bool ok = stemd::atomicWrite(jsonPath, sidecar, error);
        if (ok && !rewrite)
            ok = stemd::atomicWrite(wavPath, stemd::wavFloat32(take.audio->variationData(variation), frames, 2, take.sampleRate), error);
        const std::lock_guard<std::mutex> lock(fMutex);
        TakeRecord* t = findLocked(take.id);
        if (!t) return;
        t->takeNumber = take.takeNumber;
        if (!guideFile.empty()) t->guideFile = guideFile;
        stemd::TakeFile& onDisk = t->files[static_cast<size_t>(variation)];
        if (!ok) {
            onDisk.written = false;
            t->errorCode = "io_error";
            t->errorMessage = error;
            fLastError = "take " + t->id + ": io_error: " + error;
            return;
        }
        onDisk.wav = wavPath;
        onDisk.sidecar = jsonPath;
        onDisk.sidecarMissing = missing;
        onDisk.barsKept = partial.empty() ? 0 : kept;
    }

    // ---- takes at another rate than the host's (worker) ---------------------------------------------------------
    // run() plays a take only at the host's rate. One made at another (a project moved to another rate, or
    // the host's rate changed) is resampled here, once its files are written, into a TakeAudio at the
    // host's rate that takes its place in run()'s table. The record and its files keep their own rate.
    void conformRates()
    {
        const Snapshot snap = snapshot();
        if (!snap.valid) return;
        std::vector<std::string> tried;
        for (;;) {
            TakeRecord copy;
            {
                const std::lock_guard<std::mutex> lock(fMutex);
                const TakeRecord* found = nullptr;
                for (const auto& take : fTakes) {
                    if (!take.audio || inFlight(take) || take.audio->sampleRate() == snap.rate ||
                        take.audio->barsReceived() == 0 || std::find(tried.begin(), tried.end(), take.id) != tried.end())
                        continue;
                    bool written = true;
                    for (size_t v = 0; v < take.files.size(); ++v)
                        written = written && (take.files[v].written || keptBars(*take.audio, static_cast<int32_t>(v)) == 0);
                    if (written) {
                        found = &take;
                        break;
                    }
                }
                if (!found) return;
                copy = *found;
            }
            tried.push_back(copy.id);
            BarGrid grid;
            if (!stemd::recordGrid(copy, grid)) continue;
            grid = BarGrid(grid.tempo(), grid.meter(), snap.rate);
            const TakeAudio& old = *copy.audio;
            auto audio = std::make_shared<TakeAudio>(old.serial(), grid.barStart(copy.startBar), grid, copy.startBar,
                                                     copy.bars, copy.variations);
            for (int32_t v = 0; v < copy.variations; ++v) {
                const std::vector<float> samples =
                    stemd::resampleStereo(old.variationData(v), old.frames(), old.sampleRate(), snap.rate, audio->frames());
                for (int32_t b = 0; b < copy.bars; ++b)
                    if (old.barReady(v, b)) audio->fillBar(v, b, samples.data() + audio->barOffset(b) * 2, audio->barFrames(b));
            }
            audio->chosen.store(old.chosen.load(std::memory_order_relaxed), std::memory_order_relaxed);
            audio->enabled.store(old.enabled.load(std::memory_order_relaxed), std::memory_order_relaxed);
            const std::lock_guard<std::mutex> lock(fMutex);
            TakeRecord* take = findLocked(copy.id);
            if (!take || take->audio != copy.audio) continue;  // changed meanwhile: the next pass sees it
            for (auto& slot : fLive)
                if (slot.load(std::memory_order_relaxed) == copy.audio.get()) slot.store(audio.get(), std::memory_order_release);
            waitForRun();
            take->audio = std::move(audio);
        }
    }

    // ---- takes from a saved project (host thread) ---------------------------------------------------------------
    void loadTakes(const std::string& text)
    {
        std::vector<TakeRecord> loaded;
        std::string error;
        if (text.size() > kMaxStateText || !stemd::takesFromJson(text, loaded, error)) {
            const std::lock_guard<std::mutex> lock(fMutex);
            fLastError = "takes state not read: " + (text.size() > kMaxStateText ? std::string("over 4 MiB") : error);
            return;
        }
        std::vector<std::string> known;
        {
            const std::lock_guard<std::mutex> lock(fMutex);
            for (const auto& take : fTakes) known.push_back(take.id);
        }
        for (auto& take : loaded) {
            if (std::find(known.begin(), known.end(), take.id) != known.end()) continue;  // already here, live
            loadAudio(take);
        }
        const std::lock_guard<std::mutex> lock(fMutex);
        if (!error.empty()) fLastError = "takes state: " + error;
        std::vector<TakeRecord> next;
        for (auto& take : loaded) {
            TakeRecord* live = findLocked(take.id);
            next.push_back(live ? std::move(*live) : std::move(take));
        }
        for (auto& take : fTakes)  // requests still streaming stay, whatever the state says
            if (!take.id.empty() && inFlight(take)) next.push_back(std::move(take));
        // republish: what is no longer listed leaves run() before its memory goes
        for (auto& slot : fLive) slot.store(nullptr, std::memory_order_release);
        for (auto& take : next)
            if (take.audio) publishLocked(take.audio.get());
        waitForRun();
        fTakes = std::move(next);
        if (!fTakes.empty() && fTakes.back().audio)
            fSelected.store(fTakes.back().audio->serial(), std::memory_order_release);
    }

    // Reads a saved take's WAV files into a new TakeAudio (silence where a file is missing).
    void loadAudio(TakeRecord& take)
    {
        BarGrid grid;
        if (!stemd::recordGrid(take, grid)) return;
        grid = BarGrid(grid.tempo(), grid.meter(), take.sampleRate);
        const uint64_t serial = fSerial.fetch_add(1) + 1;
        auto audio = std::make_shared<TakeAudio>(serial, take.startSample, grid, take.startBar, take.bars, take.variations);
        int32_t found = 0;
        for (int32_t v = 0; v < take.variations; ++v) {
            const stemd::TakeFile& file = take.files[static_cast<size_t>(v)];
            std::vector<float> samples;
            uint32_t rate = 0;
            std::string error;
            if (file.wav.empty() || !stemd::readWav(file.wav, audio->frames(), samples, rate, error) || rate != take.sampleRate) {
                const std::lock_guard<std::mutex> lock(fMutex);
                if (!file.wav.empty())
                    fLastError = "take " + take.id + ": " + (error.empty() ? file.wav + " is at another rate" : error);
                continue;
            }
            ++found;
            const int64_t have = static_cast<int64_t>(samples.size() / 2);
            for (int32_t b = 0; b < take.bars; ++b) {
                const int64_t start = audio->barOffset(b), n = audio->barFrames(b);
                if (start + n > have) break;
                audio->fillBar(v, b, samples.data() + start * 2, n);
            }
        }
        if (inFlight(take)) take.state = "interrupted";  // saved while it streamed: no request is open now
        if (take.state == "cancelled") audio->enabled.store(false, std::memory_order_relaxed);  // as before the save
        if (found == 0) {
            take.state = "missing";
            return;
        }
        audio->chosen.store(take.chosen, std::memory_order_relaxed);
        take.audio = std::move(audio);
    }

    // ---- the network thread's events (DaemonListener) ------------------------------------------------------------
    void onConnection(stemd::ConnectionState state, const std::string& message) override
    {
        const std::lock_guard<std::mutex> lock(fMutex);
        fConnected = state == stemd::ConnectionState::Connected;
        std::string daemon = fStates[kDaemon];
        fConnection = std::string(stemd::connection_state_name(state)) + " (" + daemon.substr(0, 80) + ")";
        if (!message.empty()) fConnection += ": " + message.substr(0, 200);
    }

    void onModels(const std::vector<stemd::ModelRow>& rows) override
    {
        const std::lock_guard<std::mutex> lock(fMutex);
        fModels.clear();
        for (const auto& row : rows) fModels += (fModels.empty() ? "" : ", ") + row.name.substr(0, 64);
        fUiModels = rows;
    }

    void setTakeState(const std::string& id, const char* state)
    {
        const std::lock_guard<std::mutex> lock(fMutex);
        if (TakeRecord* take = findLocked(id))
            if (take->state != "cancelling" || std::strcmp(state, "cancelled") == 0) take->state = state;
    }

    void onAccepted(const std::string& id) override { setTakeState(id, "accepted"); }
    void onQueued(const std::string& id, int32_t ahead) override
    {
        setTakeState(id, "queued");
        uiQueued(id, ahead);
    }
    void onProgress(const std::string& id, float, int32_t) override { setTakeState(id, "streaming"); }

    void onChunk(const std::string& id, int32_t variation, int32_t bar, int64_t startSample, int32_t sampleRate,
                 int32_t channels, const float* audio, size_t frames) override
    {
        const std::lock_guard<std::mutex> lock(fMutex);
        TakeRecord* take = findLocked(id);
        if (!take || !take->audio) return;
        TakeAudio& buffer = *take->audio;
        const char* wrong = nullptr;
        if (variation < 0 || variation >= buffer.variations() || bar < 0 || bar >= buffer.bars()) wrong = "a bar outside the take";
        else if (sampleRate != static_cast<int32_t>(buffer.sampleRate()) || channels != 2) wrong = "another rate or channel count";
        else if (static_cast<int64_t>(frames) != buffer.barFrames(bar)) wrong = "a bar of another length";
        else if (startSample != take->startSample + buffer.barOffset(bar)) wrong = "a bar at another sample";
        if (wrong) {
            take->errorCode = "grid_mismatch";
            take->errorMessage = std::string("the daemon sent ") + wrong + " (bar " + std::to_string(bar) + ")";
            fLastError = "take " + id + ": grid_mismatch: " + take->errorMessage;
            return;
        }
        buffer.fillBar(variation, bar, audio, static_cast<int64_t>(frames));
        if (take->state != "cancelling") take->state = "streaming";
    }

    void onSidecar(const std::string& id, int32_t variation, const std::string& json) override
    {
        const std::lock_guard<std::mutex> lock(fMutex);
        TakeRecord* take = findLocked(id);
        if (!take || variation < 0 || variation >= static_cast<int32_t>(take->files.size()) || json.size() > 65536) return;
        take->files[static_cast<size_t>(variation)].daemonSidecar = json;
    }

    void onTake(const std::string&, int32_t, const std::string&) override {}

    void onDone(const std::string& id) override
    {
        setTakeState(id, "done");
        fWake.notify_all();
    }

    void onCancelled(const std::string& id) override
    {
        const std::lock_guard<std::mutex> lock(fMutex);
        if (TakeRecord* take = findLocked(id)) {
            take->state = "cancelled";
            if (take->audio) take->audio->enabled.store(false, std::memory_order_release);
        }
    }

    void onError(const std::string& id, const std::string& code, const std::string& message) override
    {
        const std::lock_guard<std::mutex> lock(fMutex);
        fLastError = (id.empty() ? std::string() : "take " + id + ": ") + code + ": " + message.substr(0, 300);
        TakeRecord* take = id.empty() ? nullptr : findLocked(id);
        if (!take) return;
        take->state = "failed";
        take->errorCode = code.substr(0, 64);
        take->errorMessage = message.substr(0, 1000);
        // a take cut off keeps playing the bars it has; one refused has none
        if (take->audio && take->audio->barsReceived() == 0) take->audio->enabled.store(false, std::memory_order_release);
    }

    // ---- status ------------------------------------------------------------------------------------------------
    std::string statusLocked() const
    {
        std::string s = fConnection.empty() ? std::string("starting") : fConnection;
        if (!fModels.empty()) s += "; models: " + fModels;
        // run() plays a take only at the host's rate: one at another is silent until conformRates() is done
        const uint32_t hostRate = fSnapValid.load(std::memory_order_acquire) ? fSnapRate.load(std::memory_order_relaxed) : 0;
        size_t playable = 0, otherRate = 0;
        uint32_t takeRate = 0;
        for (const auto& take : fTakes) {
            if (!take.audio || take.audio->barsReceived() == 0) continue;
            if (hostRate && take.audio->sampleRate() != hostRate) {
                ++otherRate;
                takeRate = take.audio->sampleRate();
            } else {
                ++playable;
            }
        }
        s += "; " + std::to_string(fTakes.size()) + " takes (" + std::to_string(playable) + " playable)";
        if (!fConnected && playable) s += ", playing what it has";
        if (otherRate)
            s += "; " + std::to_string(otherRate) + " silent: made at " + std::to_string(takeRate) +
                 " Hz, the host runs at " + std::to_string(hostRate) + " Hz (being resampled)";
        if (!fGuideMessage.empty()) s += "; guide: " + fGuideMessage;
        if (!fLastError.empty()) s += "; last error: " + fLastError;
        return s;
    }

    void publishOutputsLocked()
    {
        fParams[kConnected].store(fConnected ? 1.0f : 0.0f, std::memory_order_relaxed);
        const TakeRecord* take = selectedLocked();
        fParams[kBarsReceived].store(take && take->audio ? static_cast<float>(take->audio->barsReceived()) : 0.0f,
                                     std::memory_order_relaxed);
    }

    // ---- members -----------------------------------------------------------------------------------------------
    // parameters: set by the host (any thread), read everywhere
    std::atomic<float> fParams[kParamCount] = {{4}, {1}, {0}, {0}, {1}, {0}, {0}, {0}, {0}, {0}, {4}};
    std::atomic<uint32_t> fTriggers[kParamCount] = {};
    std::atomic<bool> fTriggerHigh[kParamCount] = {};
    std::atomic<bool> fRan{false};  // run() has returned once: a switch's value since is the host's press

    // run()'s own (audio thread only)
    stemd::HostFormat fFormat = stemd::HostFormat::Frames;
    BarGrid fGrid;
    stemd::TimelineFollower fTimeline;
    stemd::TempoReader fTempoReader;   // run() only
    int64_t fFreeClock = 0, fAuditionStart = 0;
    uint32_t fAuditionSeen = 0;
    uint64_t fAuditionTake = 0;
    std::atomic<uint64_t> fShownAudition{0};  // run() to the window: the take auditioning, frames into it
    std::atomic<int64_t> fShownAuditionAt{0};

    // audio thread -> others
    std::atomic<uint64_t> fRunSeq{0};
    std::atomic<uint32_t> fSnapSeq{0};
    std::atomic<bool> fSnapValid{false}, fSnapPlaying{false};
    std::atomic<int64_t> fSnapTs{0}, fSnapTempoNum{120}, fSnapTempoDen{1};
    std::atomic<int32_t> fSnapMeter{4 * 64 + 4};
    std::atomic<uint32_t> fSnapRate{48000};
    stemd::SpscQueue<NoteCommand, 256> fNotes;

    // others -> audio thread
    std::atomic<const TakeAudio*> fLive[kMaxLiveTakes];
    std::atomic<uint64_t> fSelected{0};
    std::atomic<uint64_t> fSerial{0};  // TakeAudio serials: newer takes win where takes overlap

    // everything below under fMutex (never taken by run())
    mutable std::mutex fMutex;
    std::condition_variable fWake;
    std::string fStates[kStateCount];
    std::vector<TakeRecord> fTakes;
    std::string fConnection, fModels, fLastError, fIdPrefix;
    bool fConnected = false, fLinkDirty = false, fQuit = false;
    uint64_t fRequestCount = 0;

    // the guide: the recorder (its buffer run()'s, its phase shared) and, under fMutex, the recorded guide
    struct GuideInfo {
        int32_t bars = 0, notes = 0, fromBar = 0;
        std::string tempo, meter, file;
    };
    stemd::GuideRecorder fGuideRecorder;
    std::shared_ptr<const std::vector<uint8_t>> fGuide;
    GuideInfo fGuideInfo;
    std::string fGuideMessage;

    stemd::DaemonLink fLink;
    std::thread fWorker;

#include "ui_access.inc"  // the window's read-only view and its actions (ui_api.hpp)

    DISTRHO_DECLARE_NON_COPYABLE_WITH_LEAK_DETECTOR(StemdPlugin)
};

Plugin* createPlugin()
{
    return new StemdPlugin();
}

END_NAMESPACE_DISTRHO
