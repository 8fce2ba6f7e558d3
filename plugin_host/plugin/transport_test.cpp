// The transport maths, driven from tests/test_plugin_build.py against stemd.timing.Grid:
//   transport_test grid BPM NUMERATOR DENOMINATOR RATE FIRST LAST
//       prints the tempo as sent to the daemon, then the first sample of each bar FIRST..LAST, one a line;
//       exits 1 when barAt / barLineFrom disagree with the bar starts (message on stderr)
//   transport_test tempo BPM        prints the exact tempo ("num/den") or "invalid"
//   transport_test meter N D        prints "n/d" or "invalid"
//   transport_test follow FORMAT BPM N D RATE ORIGIN BLOCK BLOCKS [glitch]
//       a host (FORMAT vst3, clap or lv2) whose bar 1 is at frame ORIGIN plays BLOCKS blocks of BLOCK frames;
//       its bar/beat/tick are filled as DPF 1.6's wrapper for that format fills them (with "glitch": LV2's
//       bar number one block early at each bar line); prints each block's timeline sample as the plugin
//       reads it and the exact one ("ts expected" a line)
//   transport_test lv2host BPM N D RATE BLOCK
//       jalv and DPF 1.6's LV2 wrapper between a JACK transport and the plugin, one block per stdin line
//       "FRAME BBT_FRAME ROLLING": JACK's frame that cycle, the frame the timebase master (tests/
//       jack_timebase.c) computed its bar/beat/tick from, 1 or 0. jalv sends a time:Position (float
//       barBeat from the master's whole ticks) only when the frame or rolling is not what it expected; DPF
//       keeps the event's values and adds each block to them itself. Prints "ts frame" for each block
//   transport_test jackhost FORMAT BPM N D RATE BLOCK CONVENTION
//       the same cycles through jalv and DPF's LV2 wrapper (FORMAT lv2) or DPF's JACK app (FORMAT jack: the
//       master's bar/beat/tick fresh every block), the master writing its beats per minute in the meter's
//       beats (CONVENTION beats, as tests/jack_timebase.c and JACK's example) or in quarters (quarters, as
//       Ardour 7); the plugin reads its tempo as followTransport does. Prints "ts frame tempo" for each block
#include "transport.hpp"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

using namespace stemd;

static int fail(const char* what, long long bar)
{
    std::fprintf(stderr, "transport_test: %s at bar %lld\n", what, bar);
    return 1;
}

// The master's bar/beat/tick for `frame` as tests/jack_timebase.c computes them, as jalv sends them.
struct Lv2Event {
    int64_t frame;
    float speed, barBeat, beatsPerBar, beatsPerMinute;
    int64_t bar;
    int32_t beatUnit;
};

static Lv2Event masterEvent(const BarGrid& grid, double bpm, int64_t frame, int64_t bbtFrame, bool rolling,
                            bool quarters, double* beatTick = nullptr)
{
    const int64_t bar = grid.barAt(bbtFrame);
    const double n = grid.meter().numerator, beatLen = static_cast<double>(grid.barLength(bar)) / n;
    const double inBar = static_cast<double>(bbtFrame - grid.barStart(bar)) / beatLen;
    const double beat = std::floor(inBar), tick = std::floor((inBar - beat) * 1920.0);
    // JACK's example counts beats of beat_type, Ardour 7 quarters
    const double jackBpm = quarters ? bpm : bpm * grid.meter().denominator / 4.0;
    if (beatTick) {
        beatTick[0] = beat;
        beatTick[1] = tick;
    }
    return Lv2Event{frame, rolling ? 1.0f : 0.0f, static_cast<float>(beat + tick / 1920.0), static_cast<float>(n),
                    static_cast<float>(jackBpm), bar, grid.meter().denominator};
}

// lv2host (format Lv2, the meter's beats, prints "ts frame") and jackhost (prints "ts frame tempo")
static int jackHost(char** argv, HostFormat format, bool quarters, bool printTempo)
{
    Tempo tempo;
    Meter meter;
    const double bpm = std::strtod(argv[2], nullptr);
    if (!tempoFromHost(bpm, tempo) || !meterFromHost(std::strtod(argv[3], nullptr), std::strtod(argv[4], nullptr), meter))
        return fail("tempo or meter refused", -1);
    const double rate = std::strtod(argv[5], nullptr);
    const BarGrid grid(tempo, meter, static_cast<uint32_t>(rate));
    const uint32_t block = static_cast<uint32_t>(std::strtoul(argv[6], nullptr, 10));
    // DPF 1.6 DistrhoPluginLV2.cpp: fLastPositionData (its types) and the TimePosition it fills
    int64_t lastBar = -1, lastFrame = -1;
    float lastBarBeat = -1.0f, lastBeatsPerBar = 0.0f, lastBpm = 0.0f;
    double speed = 0.0;
    HostPosition pos;
    pos.bbtValid = false;
    // jalv's expectation for the next cycle
    int64_t expected = 0;
    bool wasRolling = false;
    TimelineFollower follower;
    TempoReader reader;
    BarGrid heard = grid;   // the plugin's grid, from the tempo it reads (followTransport)
    long long frame = 0, bbtFrame = 0;
    int rolling = 0;
    char text[64];
    while (std::scanf("%lld %lld %d", &frame, &bbtFrame, &rolling) == 3) {
        if (format == HostFormat::Frames) {  // DistrhoPluginJACK.cpp: the master's values every cycle
            double beatTick[2];
            const Lv2Event ev = masterEvent(grid, bpm, frame, bbtFrame, rolling != 0, quarters, beatTick);
            pos.playing = rolling != 0;
            pos.frame = static_cast<uint64_t>(frame);
            pos.bar = static_cast<int32_t>(ev.bar + 1);
            pos.beat = static_cast<int32_t>(beatTick[0]) + 1;
            pos.tick = beatTick[1];
            pos.beatsPerBar = ev.beatsPerBar;
            pos.beatType = ev.beatUnit;
            pos.beatsPerMinute = static_cast<double>(ev.beatsPerMinute);
            pos.bbtValid = true;
            speed = 0.0;                     // no sums of DPF's own
        } else if (frame != expected || (rolling != 0) != wasRolling) {  // jalv: the transport is not as expected
            const Lv2Event ev = masterEvent(grid, bpm, frame, bbtFrame, rolling != 0, quarters);
            speed = ev.speed;
            pos.playing = speed != 0.0;
            lastBar = ev.bar;
            pos.bar = static_cast<int32_t>(lastBar + 1);
            lastBarBeat = ev.barBeat;
            const double rest = std::fmod(lastBarBeat, 1.0f);
            pos.beat = static_cast<int32_t>(std::round(lastBarBeat - rest + 1.0));
            pos.tick = rest * pos.ticksPerBeat;
            pos.beatType = ev.beatUnit;
            lastBeatsPerBar = ev.beatsPerBar;
            pos.beatsPerBar = lastBeatsPerBar;
            lastBpm = ev.beatsPerMinute;
            pos.beatsPerMinute = lastBpm * (speed != 0.0 ? std::fabs(speed) : 1.0);
            lastFrame = ev.frame;
            pos.frame = static_cast<uint64_t>(lastFrame);
            pos.bbtValid = true;
        }
        expected = rolling ? frame + block : frame;
        wasRolling = rolling != 0;
        Tempo read;
        const bool told = reader.read(format, pos, static_cast<uint32_t>(rate), block, read);
        if (pos.bbtValid && told && (read.num != heard.tempo().num || read.den != heard.tempo().den))
            heard = BarGrid(read, meter, static_cast<uint32_t>(rate));
        const int64_t ts = follower.follow(format, pos, heard, block, !pos.bbtValid || reader.sure());
        if (printTempo)
            std::printf("%lld %lld %s\n", static_cast<long long>(ts), frame, tempoText(heard.tempo(), text, sizeof text));
        else
            std::printf("%lld %lld\n", static_cast<long long>(ts), frame);
        if (speed != 0.0) {  // DPF's sums for the next block
            lastFrame += block;
            pos.frame = static_cast<uint64_t>(lastFrame);
            const double added = static_cast<double>(block) / (60.0 * rate / (lastBpm * speed));
            lastBarBeat = static_cast<float>(std::fmod(lastBarBeat + added, static_cast<double>(lastBeatsPerBar)));
            const double rest = std::fmod(lastBarBeat, 1.0f);
            pos.beat = static_cast<int32_t>(std::round(lastBarBeat - rest + 1.0));
            pos.tick = rest * pos.ticksPerBeat;
            lastBar += static_cast<int64_t>(std::floor((lastBarBeat + added) / lastBeatsPerBar));
            pos.bar = static_cast<int32_t>(lastBar + 1);
        }
    }
    return 0;
}

int main(int argc, char** argv)
{
    char text[64];
    if (argc == 3 && std::strcmp(argv[1], "tempo") == 0) {
        Tempo tempo;
        std::puts(tempoFromHost(std::strtod(argv[2], nullptr), tempo) ? tempoText(tempo, text, sizeof text)
                                                                       : "invalid");
        return 0;
    }
    if (argc == 4 && std::strcmp(argv[1], "meter") == 0) {
        Meter meter;
        if (meterFromHost(std::strtod(argv[2], nullptr), std::strtod(argv[3], nullptr), meter))
            std::printf("%d/%d\n", meter.numerator, meter.denominator);
        else
            std::puts("invalid");
        return 0;
    }
    if ((argc == 10 || argc == 11) && std::strcmp(argv[1], "follow") == 0) {
        Tempo tempo;
        Meter meter;
        if (!tempoFromHost(std::strtod(argv[3], nullptr), tempo) ||
            !meterFromHost(std::strtod(argv[4], nullptr), std::strtod(argv[5], nullptr), meter))
            return fail("tempo or meter refused", -1);
        const BarGrid grid(tempo, meter, static_cast<uint32_t>(std::strtoul(argv[6], nullptr, 10)));
        const long long origin = std::atoll(argv[7]), block = std::atoll(argv[8]), blocks = std::atoll(argv[9]);
        const bool glitch = argc == 11 && std::strcmp(argv[10], "glitch") == 0;
        const HostFormat format = std::strcmp(argv[2], "vst3") == 0 ? HostFormat::Vst3
                                : std::strcmp(argv[2], "clap") == 0 ? HostFormat::Clap
                                : std::strcmp(argv[2], "lv2") == 0 ? HostFormat::Lv2 : HostFormat::Frames;
        const double n = meter.numerator, d = meter.denominator, spq = grid.samplesPerQuarter();
        TimelineFollower follower;
        for (long long b = 0; b < blocks; ++b) {
            const long long position = b * block;                 // from bar 1, exact
            const double quarters = static_cast<double>(position) / spq;
            HostPosition pos;
            pos.playing = true;
            pos.bbtValid = true;
            pos.beatsPerBar = n;
            pos.beatType = d;
            pos.beatsPerMinute = std::strtod(argv[3], nullptr);
            pos.frame = static_cast<uint64_t>(origin + position);
            if (format == HostFormat::Vst3) {               // DistrhoPluginVST3.cpp, DPF 1.6
                const int perBar = meter.numerator * 4 / meter.denominator;
                const double barBeats = std::fmod(quarters, perBar) / perBar * n, rest = std::fmod(barBeats, 1.0);
                pos.bar = static_cast<int32_t>(quarters) / perBar + 1;
                pos.beat = static_cast<int32_t>(barBeats - rest + 0.5) + 1;
                pos.tick = rest * 1920.0;
            } else if (format == HostFormat::Clap) {        // DistrhoPluginCLAP.cpp: frame is steady time
                const long long beats = static_cast<long long>(quarters);
                pos.frame = static_cast<uint64_t>(987654 + position);
                pos.bar = static_cast<int32_t>(beats / meter.numerator) + 1;
                pos.beat = static_cast<int32_t>(beats % meter.numerator) + 1;
                pos.tick = (quarters - static_cast<double>(beats)) * 1920.0;
            } else {                                        // LV2 / JACK: the meter's bars and beats
                const double beats = quarters * d / 4.0, barBeat = std::fmod(beats, n);
                pos.bar = static_cast<int32_t>(std::floor(beats / n)) + 1;
                pos.beat = static_cast<int32_t>(std::floor(barBeat)) + 1;
                pos.tick = (barBeat - std::floor(barBeat)) * 1920.0;
                if (glitch && grid.barAt(position + block) != grid.barAt(position)) pos.bar += 1;
            }
            std::printf("%lld %lld\n", static_cast<long long>(follower.follow(format, pos, grid, static_cast<uint32_t>(block))),
                        position);
        }
        return 0;
    }
    if (argc == 7 && std::strcmp(argv[1], "lv2host") == 0) return jackHost(argv, HostFormat::Lv2, false, false);
    if (argc == 9 && std::strcmp(argv[1], "jackhost") == 0)
        return jackHost(argv + 1, std::strcmp(argv[2], "jack") == 0 ? HostFormat::Frames : HostFormat::Lv2,
                        std::strcmp(argv[8], "quarters") == 0, true);
    if (argc != 8 || std::strcmp(argv[1], "grid") != 0) {
        std::fprintf(stderr, "usage: transport_test grid BPM N D RATE FIRST LAST | tempo BPM | meter N D\n");
        return 2;
    }
    Tempo tempo;
    Meter meter;
    if (!tempoFromHost(std::strtod(argv[2], nullptr), tempo)) return fail("tempo refused", -1);
    if (!meterFromHost(std::strtod(argv[3], nullptr), std::strtod(argv[4], nullptr), meter))
        return fail("meter refused", -1);
    const BarGrid grid(tempo, meter, static_cast<uint32_t>(std::strtoul(argv[5], nullptr, 10)));
    const long long first = std::atoll(argv[6]), last = std::atoll(argv[7]);
    std::puts(tempoText(grid.tempo(), text, sizeof text));
    for (long long bar = first; bar <= last; ++bar) {
        const int64_t start = grid.barStart(bar);
        std::printf("%lld\n", static_cast<long long>(start));
        if (grid.barAt(start) != bar) return fail("barAt(barStart) is not the bar", bar);
        if (bar > 0 && grid.barAt(start - 1) != bar - 1) return fail("barAt(barStart - 1) is not the bar before", bar);
        if (grid.barLineFrom(start, true) != bar) return fail("barLineFrom(start, at) is not the bar", bar);
        if (grid.barLineFrom(start, false) != bar + 1) return fail("barLineFrom(start, after) is not the next bar", bar);
        if (bar > 0 && grid.barLineFrom(start - 1, false) != bar) return fail("barLineFrom(start - 1) is not the bar", bar);
    }
    return 0;
}
