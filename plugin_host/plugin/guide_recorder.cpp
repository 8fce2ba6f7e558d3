// A guide played into the plugin's MIDI input: see guide_recorder.hpp.
#include "guide_recorder.hpp"

#include <algorithm>
#include <cstring>
#include <map>
#include <tuple>

namespace stemd {

namespace {

constexpr uint8_t kNoteOn = 0x90, kNoteOff = 0x80, kProgram = 0xC0;

// round(value / div) for div > 0, halves to even (as Python's round, which the bridge's recorder uses)
int64_t roundDiv(__int128 value, __int128 div) noexcept
{
    __int128 q = value / div, r = value % div;
    if (r < 0) {
        r += div;
        --q;
    }
    if (2 * r > div || (2 * r == div && (q & 1))) ++q;
    return static_cast<int64_t>(q);
}

}  // namespace

GuideRecorder::GuideRecorder()
    : fEvents(new Event[kGuideMaxEvents])
{
}

bool GuideRecorder::arm(int32_t bars) noexcept
{
    int32_t idle = static_cast<int32_t>(Phase::Idle);
    if (fPhase.load(std::memory_order_acquire) != idle) return false;
    fBars.store(std::clamp(bars, 1, 64), std::memory_order_relaxed);
    fBarsDone.store(0, std::memory_order_relaxed);
    fWhy.store(static_cast<int32_t>(Why::None), std::memory_order_relaxed);
    fStopAsked.store(false, std::memory_order_relaxed);
    return fPhase.compare_exchange_strong(idle, static_cast<int32_t>(Phase::Armed), std::memory_order_acq_rel);
}

void GuideRecorder::stop() noexcept
{
    int32_t armed = static_cast<int32_t>(Phase::Armed);
    if (fPhase.compare_exchange_strong(armed, static_cast<int32_t>(Phase::Idle), std::memory_order_acq_rel)) return;
    fStopAsked.store(true, std::memory_order_release);  // recording: the audio thread stops at its next block
}

void GuideRecorder::stopNow(Why why) noexcept
{
    fWhy.store(static_cast<int32_t>(why), std::memory_order_relaxed);
    fPhase.store(static_cast<int32_t>(Phase::Stopped), std::memory_order_release);
}

void GuideRecorder::begin(const BarGrid& grid, int64_t ts, bool tempoSure) noexcept
{
    const int64_t bar = grid.barLineFrom(ts, true);
    fGrid = grid;
    fStart = grid.barStart(bar);
    fEnd = grid.barStart(bar + fBars.load(std::memory_order_relaxed));
    fCount = 0;
    fNoteOns = 0;
    fBegunUnsure = !tempoSure;
    fFromBar.store(static_cast<int32_t>(std::min<int64_t>(bar, INT32_MAX)), std::memory_order_relaxed);
    fBarsDone.store(0, std::memory_order_relaxed);
    fNextTs = ts;
    fPhase.store(static_cast<int32_t>(Phase::Recording), std::memory_order_release);
}

bool GuideRecorder::block(const BarGrid& grid, int64_t ts, uint32_t frames, bool playing, bool tempoSure) noexcept
{
    const Phase phase = this->phase();
    if (phase == Phase::Armed) {
        if (!playing) return true;
        begin(grid, ts, tempoSure);
    } else if (phase != Phase::Recording) {
        return false;
    }
    const bool tempoChanged = grid.tempo().num != fGrid.tempo().num || grid.tempo().den != fGrid.tempo().den;
    const bool meterOrRateChanged = grid.meter().numerator != fGrid.meter().numerator ||
                                    grid.meter().denominator != fGrid.meter().denominator ||
                                    grid.sampleRate() != fGrid.sampleRate();
    // recording: a stop, a locate, another tempo, meter or rate ends it, and nothing is kept; the tempo told
    // after a recording began on a guess begins it again
    if (fStopAsked.load(std::memory_order_acquire)) stopNow(Why::Cancelled);
    else if (!playing) stopNow(Why::TransportStopped);
    else if (tempoChanged && !meterOrRateChanged && fBegunUnsure && tempoSure)
        begin(grid, ts, true);
    else if (tempoChanged || meterOrRateChanged)
        stopNow(Why::GridChanged);
    // A late cycle may skip ahead (JACK's dummy driver on a loaded machine skips hundreds of milliseconds), or
    // repeat the last cycle's frame before it skips the next; either way its events keep the host's samples,
    // which is where a player following the same transport put them. A locate back by more than two blocks,
    // or on by more than a second, is a jump.
    else if (ts + 2 * static_cast<int64_t>(frames) < fNextTs || ts - fNextTs > static_cast<int64_t>(grid.sampleRate()))
        stopNow(Why::Jumped);
    if (this->phase() != Phase::Recording) return true;
    fBlockTs = ts;
    fBlockFrames = frames;
    fNextTs = ts + frames;
    return true;
}

void GuideRecorder::event(uint32_t frame, const uint8_t* data, uint32_t size) noexcept
{
    if (phase() != Phase::Recording || size < 2) return;
    const uint8_t kind = data[0] & 0xF0;
    if (kind != kNoteOn && kind != kNoteOff && kind != kProgram) return;
    if (kind != kProgram && size < 3) return;
    const int64_t sample = fBlockTs + std::min(frame, fBlockFrames);
    if (kind == kNoteOn && data[2] > 0 && ++fNoteOns > kGuideMaxNotes) {
        stopNow(Why::TooManyNotes);
        return;
    }
    if (fCount >= kGuideMaxEvents) {
        stopNow(Why::TooManyNotes);
        return;
    }
    fEvents[fCount++] = Event{sample, data[0], static_cast<uint8_t>(data[1] & 0x7F),
                              static_cast<uint8_t>(kind == kProgram ? 0 : data[2] & 0x7F)};
}

void GuideRecorder::endBlock() noexcept
{
    if (phase() != Phase::Recording) return;
    const int64_t reached = fBlockTs + fBlockFrames;
    const int64_t bar = fGrid.barAt(std::max<int64_t>(reached, fStart)) - fFromBar.load(std::memory_order_relaxed);
    fBarsDone.store(static_cast<int32_t>(std::clamp<int64_t>(bar, 0, fBars.load(std::memory_order_relaxed))),
                    std::memory_order_relaxed);
    if (reached >= fEnd) fPhase.store(static_cast<int32_t>(Phase::Done), std::memory_order_release);
}

bool GuideRecorder::finish(RecordedGuide& out, std::string& error)
{
    const Phase phase = this->phase();
    if (phase != Phase::Done) {
        if (phase == Phase::Stopped) fPhase.store(static_cast<int32_t>(Phase::Idle), std::memory_order_release);
        error = "no recording has finished";
        return false;
    }
    std::vector<Event> events(fEvents.get(), fEvents.get() + fCount);
    std::stable_sort(events.begin(), events.end(), [](const Event& a, const Event& b) { return a.sample < b.sample; });
    // Positions in exact quarters from the first bar line, as the bridge's recorder reads them: a sample is
    // sample x tempo / (60 x rate) quarters from bar 1, the first bar line fromBar x 4 x n / d. All over one
    // denominator D, so they stay exact; ticks are rounded once, at the end.
    const int32_t fromBar = fFromBar.load(std::memory_order_relaxed), bars = fBars.load(std::memory_order_relaxed);
    const __int128 rate60 = static_cast<__int128>(fGrid.sampleRate()) * 60 * fGrid.tempo().den;
    const __int128 md = fGrid.meter().denominator, mn = fGrid.meter().numerator;
    const __int128 D = rate60 * md;
    auto at = [&](int64_t sample) -> __int128 {
        return static_cast<__int128>(sample) * fGrid.tempo().num * md - static_cast<__int128>(fromBar) * 4 * mn * rate60;
    };
    const __int128 end = static_cast<__int128>(bars) * 4 * mn * rate60;
    auto tick = [&](__int128 position) { return roundDiv(position * kGuideTicksPerQuarter, D); };
    const int64_t endTick = tick(end);

    struct Held {
        __int128 position;
        uint8_t velocity, program;
    };
    uint8_t programs[16] = {};
    std::map<std::pair<int, int>, std::vector<Held>> held;
    std::vector<GuideNote> notes;
    auto add = [&](int channel, int pitch, const Held& h, __int128 offAt) {
        const __int128 on = std::max<__int128>(h.position, 0), off = std::min(offAt, end);
        if (off <= on) return;
        GuideNote n;
        n.on = tick(on);
        n.off = tick(off);
        n.channel = static_cast<uint8_t>(channel);
        n.program = h.program;
        n.pitch = static_cast<uint8_t>(pitch);
        n.velocity = h.velocity;
        notes.push_back(n);
    };
    for (const Event& e : events) {
        const uint8_t kind = e.status & 0xF0;
        const int channel = e.status & 0x0F;
        if (kind == kProgram) {
            programs[channel] = e.data1;
            continue;
        }
        if (kind == kNoteOn && e.data2 > 0) {
            const int64_t t = tick(at(e.sample));
            if (t >= 0 && t < endTick) held[{channel, e.data1}].push_back(Held{at(e.sample), e.data2, programs[channel]});
            continue;
        }
        auto it = held.find({channel, e.data1});
        if (it == held.end() || it->second.empty()) continue;
        const Held h = it->second.front();
        it->second.erase(it->second.begin());
        add(channel, e.data1, h, at(e.sample));
    }
    for (const auto& entry : held)  // still held at the last bar line
        for (const Held& h : entry.second) add(entry.first.first, entry.first.second, h, end);
    std::stable_sort(notes.begin(), notes.end(), [](const GuideNote& a, const GuideNote& b) {
        return std::tie(a.on, a.pitch) < std::tie(b.on, b.pitch);
    });

    out.notes = std::move(notes);
    out.fromBar = fromBar;
    out.bars = bars;
    out.tempo = fGrid.tempo();
    out.meter = fGrid.meter();
    fPhase.store(static_cast<int32_t>(Phase::Idle), std::memory_order_release);
    if (out.notes.empty()) {
        error = "no note was played in bars " + std::to_string(out.fromBar + 1) + "-" +
                std::to_string(out.fromBar + out.bars) + ": no guide was made";
        return false;
    }
    out.smf = writeSmf(out.notes, out.tempo, out.meter);
    return true;
}

// ---- the Standard MIDI File -------------------------------------------------------------------------------

namespace {

void put32(std::string& s, uint32_t v)
{
    for (int shift = 24; shift >= 0; shift -= 8) s += static_cast<char>((v >> shift) & 0xFF);
}

void putVarLen(std::string& s, uint64_t v)
{
    char bytes[10];
    int n = 0;
    bytes[n++] = static_cast<char>(v & 0x7F);
    while (v >>= 7) bytes[n++] = static_cast<char>(0x80 | (v & 0x7F));
    while (n) s += bytes[--n];
}

void putChunk(std::string& s, const char* tag, const std::string& body)
{
    s.append(tag, 4);
    put32(s, static_cast<uint32_t>(body.size()));
    s += body;
}

}  // namespace

std::string writeSmf(const std::vector<GuideNote>& notes, const Tempo& tempo, const Meter& meter)
{
    std::string header;
    header += static_cast<char>(0);
    header += static_cast<char>(1);  // type 1
    header += static_cast<char>(0);
    header += static_cast<char>(2);  // two tracks
    header += static_cast<char>(kGuideTicksPerQuarter >> 8);
    header += static_cast<char>(kGuideTicksPerQuarter & 0xFF);

    // microseconds per quarter: 60e6 x den / num, rounded half to even (Python's round of a Fraction)
    const __int128 n = static_cast<__int128>(60000000) * tempo.den, d = tempo.num;
    int64_t us = static_cast<int64_t>(n / d);
    const __int128 rest2 = 2 * (n % d);
    if (rest2 > d || (rest2 == d && (us & 1))) ++us;
    us = std::clamp<int64_t>(us, 1, 0xFFFFFF);
    int32_t log2den = 0;
    while ((1 << log2den) < meter.denominator && log2den < 7) ++log2den;
    std::string meta;
    meta += '\0';
    meta += "\xFF\x51\x03";
    meta += static_cast<char>((us >> 16) & 0xFF);
    meta += static_cast<char>((us >> 8) & 0xFF);
    meta += static_cast<char>(us & 0xFF);
    meta += '\0';
    meta += "\xFF\x58\x04";
    meta += static_cast<char>(meter.numerator);
    meta += static_cast<char>(log2den);
    meta += static_cast<char>(24);
    meta += static_cast<char>(8);
    meta += '\0';
    meta += "\xFF\x2F";
    meta += '\0';

    // (tick, on, channel, program, pitch, velocity), sorted as write_smf sorts its tuples
    using Ev = std::tuple<int64_t, int, int, int, int, int>;
    std::vector<Ev> events;
    events.reserve(notes.size() * 2);
    for (const GuideNote& note : notes) {
        events.emplace_back(note.on, 1, note.channel, note.program, note.pitch, note.velocity);
        events.emplace_back(std::max(note.on + 1, note.off), 0, note.channel, note.program, note.pitch, 0);
    }
    std::sort(events.begin(), events.end());
    std::string track;
    int64_t now = 0;
    int running = -1;
    int programs[16];
    std::fill(std::begin(programs), std::end(programs), -1);
    auto message = [&](int64_t tick, int status, int a, int b, bool two) {
        putVarLen(track, static_cast<uint64_t>(tick - now));
        now = tick;
        if (status != running) track += static_cast<char>(status);
        running = status;
        track += static_cast<char>(a);
        if (two) track += static_cast<char>(b);
    };
    for (const Ev& e : events) {
        const auto [tick, on, channel, program, pitch, velocity] = e;
        if (on && programs[channel] != program && channel != 9) {
            message(tick, kProgram | channel, program, 0, false);
            programs[channel] = program;
        }
        message(tick, (on ? kNoteOn : kNoteOff) | channel, pitch, velocity, true);
    }
    putVarLen(track, 0);
    track += "\xFF\x2F";
    track += '\0';

    std::string smf;
    putChunk(smf, "MThd", header);
    putChunk(smf, "MTrk", meta);
    putChunk(smf, "MTrk", track);
    return smf;
}

// ---- base64 (the `guide` state) ----------------------------------------------------------------------------

namespace {
const char kB64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
}

std::string base64Encode(const std::string& bytes)
{
    std::string out;
    out.reserve((bytes.size() + 2) / 3 * 4);
    size_t i = 0;
    for (; i + 2 < bytes.size(); i += 3) {
        const uint32_t v = (uint8_t(bytes[i]) << 16) | (uint8_t(bytes[i + 1]) << 8) | uint8_t(bytes[i + 2]);
        for (int shift = 18; shift >= 0; shift -= 6) out += kB64[(v >> shift) & 63];
    }
    if (i < bytes.size()) {
        uint32_t v = uint8_t(bytes[i]) << 16;
        if (i + 1 < bytes.size()) v |= uint8_t(bytes[i + 1]) << 8;
        out += kB64[(v >> 18) & 63];
        out += kB64[(v >> 12) & 63];
        out += i + 1 < bytes.size() ? kB64[(v >> 6) & 63] : '=';
        out += '=';
    }
    return out;
}

bool base64Decode(const std::string& text, std::string& out, size_t maxBytes)
{
    out.clear();
    if (text.size() / 4 * 3 > maxBytes + 3) return false;
    uint32_t acc = 0;
    int bits = 0;
    size_t padding = 0;
    for (const char c : text) {
        if (c == '=') {
            ++padding;
            continue;
        }
        if (padding) return false;  // data after padding
        const char* at = std::strchr(kB64, c);
        if (c == '\0' || !at) return false;
        acc = (acc << 6) | static_cast<uint32_t>(at - kB64);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out += static_cast<char>((acc >> bits) & 0xFF);
        }
    }
    return padding <= 2 && out.size() <= maxBytes;
}

}  // namespace stemd
