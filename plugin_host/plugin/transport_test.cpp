// The transport maths, driven from tests/test_plugin_build.py against stemd.timing.Grid:
//   transport_test grid BPM NUMERATOR DENOMINATOR RATE FIRST LAST
//       prints the tempo as sent to the daemon, then the first sample of each bar FIRST..LAST, one a line;
//       exits 1 when barAt / barLineFrom disagree with the bar starts (message on stderr)
//   transport_test tempo BPM        prints the exact tempo ("num/den") or "invalid"
//   transport_test meter N D        prints "n/d" or "invalid"
#include "transport.hpp"

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
