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
                                : std::strcmp(argv[2], "clap") == 0 ? HostFormat::Clap : HostFormat::Frames;
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
