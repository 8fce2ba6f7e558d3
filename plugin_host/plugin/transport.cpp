#include "transport.hpp"

#include <cmath>
#include <cstdio>

#if !defined(__SIZEOF_INT128__)
#error "the stemd plugin's bar maths needs 128-bit integers (GCC or Clang)"
#endif

namespace stemd {

namespace {

using u128 = unsigned __int128;

uint64_t gcd(uint64_t a, uint64_t b) noexcept
{
    while (b) {
        const uint64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

bool isWhole(double value, int64_t& out) noexcept
{
    if (!(value >= -1e9 && value <= 1e9)) return false;  // NaN fails both comparisons
    const double rounded = std::floor(value + 0.5);
    if (std::fabs(value - rounded) > 1e-6) return false;
    out = static_cast<int64_t>(rounded);
    return true;
}

}  // namespace

bool tempoFromHost(double bpm, Tempo& out) noexcept
{
    if (!(bpm >= static_cast<double>(kMinBpm) - 1e-7 && bpm <= static_cast<double>(kMaxBpm) + 1e-7))
        return false;
    int64_t micro = static_cast<int64_t>(std::floor(bpm * static_cast<double>(kTempoScale) + 0.5));
    if (micro < kMinBpm * kTempoScale || micro > kMaxBpm * kTempoScale) return false;
    const uint64_t g = gcd(static_cast<uint64_t>(micro), static_cast<uint64_t>(kTempoScale));
    out.num = micro / static_cast<int64_t>(g);
    out.den = kTempoScale / static_cast<int64_t>(g);
    return true;
}

bool meterFromHost(double beatsPerBar, double beatType, Meter& out) noexcept
{
    int64_t n = 0, d = 0;
    if (!isWhole(beatsPerBar, n) || !isWhole(beatType, d)) return false;
    if (n < 1 || n > kMaxMeterNumerator) return false;
    if (d != 1 && d != 2 && d != 4 && d != 8 && d != 16 && d != 32) return false;
    out.numerator = static_cast<int32_t>(n);
    out.denominator = static_cast<int32_t>(d);
    return true;
}

const char* tempoText(const Tempo& tempo, char* buf, int size) noexcept
{
    if (tempo.den == 1)
        std::snprintf(buf, static_cast<size_t>(size), "%lld", static_cast<long long>(tempo.num));
    else
        std::snprintf(buf, static_cast<size_t>(size), "%lld/%lld", static_cast<long long>(tempo.num),
                      static_cast<long long>(tempo.den));
    return buf;
}

BarGrid::BarGrid() noexcept : BarGrid(Tempo{}, Meter{}, 48000) {}

BarGrid::BarGrid(const Tempo& tempo, const Meter& meter, uint32_t sampleRate) noexcept
    : fTempo(tempo), fMeter(meter), fRate(sampleRate >= 1000 && sampleRate <= 768000 ? sampleRate : 48000)
{
    Meter checked;
    if (tempo.num < kMinBpm * tempo.den || tempo.num > kMaxBpm * tempo.den || tempo.den <= 0 ||
        tempo.den > kTempoScale)
        fTempo = Tempo{};
    if (!meterFromHost(meter.numerator, meter.denominator, checked)) fMeter = Meter{};
    // bar seconds = numerator x 4/denominator x 60/bpm; bpm = num/den
    //   -> samples = numerator x 240 x den x rate / (denominator x num)
    // at most 64 x 240 x 10^6 x 384000 (< 2^63) over 32 x 999 x 10^6: both fit 64 bits unreduced
    const uint64_t num = static_cast<uint64_t>(fMeter.numerator) * 240u * static_cast<uint64_t>(fTempo.den) * fRate;
    const uint64_t den = static_cast<uint64_t>(fMeter.denominator) * static_cast<uint64_t>(fTempo.num);
    const uint64_t g = gcd(num, den);
    fNum = num / g;
    fDen = den / g;
}

int64_t BarGrid::barStart(int64_t bar) const noexcept
{
    if (bar <= 0) return 0;
    // round_half_up(bar x num / den) = floor((2 x bar x num + den) / (2 x den))
    const u128 twice = static_cast<u128>(static_cast<uint64_t>(bar)) * fNum * 2u + fDen;
    return static_cast<int64_t>(twice / (static_cast<u128>(fDen) * 2u));
}

int64_t BarGrid::barAt(int64_t sample) const noexcept
{
    if (sample <= 0) return 0;
    int64_t bar = static_cast<int64_t>(static_cast<u128>(static_cast<uint64_t>(sample)) * fDen / fNum);
    while (bar > 0 && barStart(bar) > sample) --bar;
    while (barStart(bar + 1) <= sample) ++bar;
    return bar;
}

int64_t BarGrid::barLineFrom(int64_t sample, bool at) const noexcept
{
    if (sample < 0) return 0;
    const int64_t bar = barAt(sample);
    if (barStart(bar) == sample && at) return bar;
    return bar + 1;
}

double BarGrid::samplesPerQuarter() const noexcept
{
    return static_cast<double>(fRate) * 60.0 * static_cast<double>(fTempo.den) / static_cast<double>(fTempo.num);
}

double hostQuarters(HostFormat format, const HostPosition& pos) noexcept
{
    if (!pos.bbtValid || pos.bar < 1 || pos.beat < 1 || !(pos.ticksPerBeat > 0) || !(pos.beatsPerBar > 0) ||
        !(pos.beatType > 0))
        return -1.0;
    const double inBar = (pos.beat - 1) + pos.tick / pos.ticksPerBeat;
    if (format == HostFormat::Vst3) {
        const int perBar = static_cast<int>(pos.beatsPerBar) * 4 / static_cast<int>(pos.beatType);
        if (perBar <= 0) return -1.0;
        return (pos.bar - 1) * static_cast<double>(perBar) + inBar / pos.beatsPerBar * perBar;
    }
    if (format == HostFormat::Clap) return (pos.bar - 1) * pos.beatsPerBar + inBar;
    return ((pos.bar - 1) * pos.beatsPerBar + inBar) * 4.0 / pos.beatType;
}

TempoUnit tempoUnit(double beats, double frames, double minFrames, double bpm, double beatType,
                    double rate) noexcept
{
    if (!(beats >= 0.25) || !(frames >= minFrames) || !(frames > 0) || !(bpm > 0) || !(rate > 0) ||
        !(beatType > 0) || beatType == 4.0)
        return TempoUnit::Unknown;
    const double perMinute = beats * 60.0 * rate / frames;   // the meter's beats a minute, measured
    if (std::fabs(perMinute / bpm - 1.0) <= 0.125) return TempoUnit::MeterBeats;
    if (std::fabs(perMinute / (bpm * beatType / 4.0) - 1.0) <= 0.125) return TempoUnit::Quarters;
    return TempoUnit::Unknown;
}

bool TempoReader::read(HostFormat format, const HostPosition& pos, uint32_t rate, uint32_t frames,
                       Tempo& out) noexcept
{
    const bool jack = format == HostFormat::Frames || format == HostFormat::Lv2;
    const bool bbt = jack && hostQuarters(format, pos) >= 0;
    const bool steady = pos.playing && fLastPlaying && pos.frame == fLastFrame + fLastFrames;
    const double minFrames = 16.0 * frames;
    if (bbt) {
        // the meter's beats from bar 1 (LV2 and JACK give the meter's own bars and beats)
        const double beats = (pos.bar - 1) * pos.beatsPerBar + (pos.beat - 1) + pos.tick / pos.ticksPerBeat;
        TempoUnit seen = TempoUnit::Unknown;
        if (format == HostFormat::Lv2) {
            if (!steady) seen = tempoUnit(beats, static_cast<double>(pos.frame), minFrames, pos.beatsPerMinute,
                                          pos.beatType, rate);
        } else if (pos.playing) {
            if (!fAnchored || pos.beatsPerMinute != fAnchorBpm || pos.beatsPerBar != fAnchorPerBar ||
                pos.beatType != fAnchorType) {  // a first roll, or the tempo or meter changed: measure anew
                fAnchored = true;
                fAnchorBpm = pos.beatsPerMinute;
                fAnchorPerBar = pos.beatsPerBar;
                fAnchorType = pos.beatType;
                fSumBeats = 0;
                fSumFrames = 0;
            } else if (steady) {  // only blocks that follow on from the last one count: a jump adds nothing
                fSumBeats += beats - fLastBeats;
                fSumFrames += static_cast<double>(pos.frame - fLastFrame);
                seen = tempoUnit(fSumBeats, fSumFrames, minFrames, pos.beatsPerMinute, pos.beatType, rate);
            }
            fLastBeats = beats;
        }
        if (seen != TempoUnit::Unknown) fUnit = seen;
    } else {
        fAnchored = false;
    }
    fLastPlaying = pos.playing;
    fLastFrame = pos.frame;
    fLastFrames = frames;
    fSure = !bbt || pos.beatType == 4.0 || fUnit != TempoUnit::Unknown;
    const bool meterBeats = bbt && fUnit == TempoUnit::MeterBeats;
    return tempoFromHost(meterBeats ? pos.beatsPerMinute * 4.0 / pos.beatType : pos.beatsPerMinute, out);
}

int64_t TimelineFollower::follow(HostFormat format, const HostPosition& pos, const BarGrid& grid,
                                 uint32_t frames, bool tempoSure) noexcept
{
    const int64_t tolerance = static_cast<int64_t>(grid.sampleRate() / 500);  // 2 ms
    const double quarters = hostQuarters(format, pos);
    int64_t ts;
    if (format == HostFormat::Clap) {
        ts = quarters >= 0 ? static_cast<int64_t>(quarters * grid.samplesPerQuarter() + 0.5)
                           : static_cast<int64_t>(pos.frame);
        const int64_t expected = fLastTs + static_cast<int64_t>(fLastFrames);
        if (pos.playing && fLastPlaying && ts - expected <= tolerance && expected - ts <= tolerance) ts = expected;
    } else {
        if (quarters >= 0) {
            int64_t origin = static_cast<int64_t>(pos.frame) -
                             static_cast<int64_t>(quarters * grid.samplesPerQuarter() + 0.5);
            if (origin <= tolerance && origin >= -tolerance) origin = 0;
            const bool steady = pos.playing && fLastPlaying && pos.frame == fLastFrame + fLastFrames;
            if (format == HostFormat::Lv2 && !fSeenBbt) {
                fOrigin = origin;
                fVotes = 0;
            } else if (format == HostFormat::Lv2 && steady) {
                // the frame advanced as it should: what disagrees is the last event's, not news
            } else if (origin - fOrigin <= tolerance && fOrigin - origin <= tolerance) {
                fVotes = 0;
            } else if (!tempoSure) {
                fVotes = 0;   // the grid's tempo may be the master's twice: its origin is no news
            } else if (fVotes > 0 && origin - fNewOrigin <= tolerance && fNewOrigin - origin <= tolerance) {
                if (++fVotes >= kOriginBlocks) {
                    fOrigin = origin;
                    fVotes = 0;
                }
            } else {
                fNewOrigin = origin;
                fVotes = 1;
            }
            fSeenBbt = true;
        }
        ts = static_cast<int64_t>(pos.frame) - fOrigin;
    }
    fLastTs = ts;
    fLastFrame = pos.frame;
    fLastFrames = frames;
    fLastPlaying = pos.playing;
    return ts;
}

}  // namespace stemd
