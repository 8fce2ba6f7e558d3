// The guide recorder driven from a script on stdin, for tests/test_plugin_guide_recorder.py:
//   grid TEMPO_NUM TEMPO_DEN METER_NUM METER_DEN RATE   the grid of the blocks that follow
//   arm BARS | stop
//   block TS FRAMES PLAYING [SURE]                        a block (then its events, then `end`); SURE 0: its
//                                                         grid's tempo is not yet sure (default 1)
//   ev FRAME HEX                                          a MIDI event in the block, e.g. ev 12 903c64
//   end
//   finish                                                prints "smf HEX", "error MESSAGE" or "phase N why W"
// Each block prints "block PHASE" (0 idle, 1 armed, 2 recording, 3 done, 4 stopped) and whether its events
// were the recorder's ("listening 0|1").
#include "guide_recorder.hpp"

#include <cstdio>
#include <iostream>
#include <sstream>
#include <string>

int main()
{
    stemd::GuideRecorder recorder;
    stemd::BarGrid grid;
    std::string line;
    while (std::getline(std::cin, line)) {
        std::istringstream in(line);
        std::string op;
        in >> op;
        if (op == "grid") {
            stemd::Tempo tempo;
            stemd::Meter meter;
            uint32_t rate = 48000;
            in >> tempo.num >> tempo.den >> meter.numerator >> meter.denominator >> rate;
            grid = stemd::BarGrid(tempo, meter, rate);
        } else if (op == "arm") {
            int bars = 4;
            in >> bars;
            std::printf("armed %d\n", recorder.arm(bars) ? 1 : 0);
        } else if (op == "stop") {
            recorder.stop();
        } else if (op == "block") {
            long long ts = 0;
            unsigned frames = 0;
            int playing = 0, sure = 1;
            in >> ts >> frames >> playing;
            if (!(in >> sure)) sure = 1;
            const bool listening = recorder.block(grid, ts, frames, playing != 0, sure != 0);
            std::printf("listening %d\n", listening ? 1 : 0);
        } else if (op == "ev") {
            unsigned frame = 0;
            std::string hex;
            in >> frame >> hex;
            uint8_t data[8] = {};
            const uint32_t size = static_cast<uint32_t>(std::min<size_t>(hex.size() / 2, sizeof data));
            for (uint32_t i = 0; i < size; ++i) data[i] = static_cast<uint8_t>(std::stoul(hex.substr(i * 2, 2), nullptr, 16));
            recorder.event(frame, data, size);
        } else if (op == "end") {
            recorder.endBlock();
            std::printf("block %d done %d\n", static_cast<int>(recorder.phase()), recorder.barsDone());
        } else if (op == "finish") {
            const int phase = static_cast<int>(recorder.phase()), why = static_cast<int>(recorder.why());
            stemd::RecordedGuide guide;
            std::string error;
            if (recorder.finish(guide, error)) {
                std::printf("smf ");
                for (const char c : guide.smf) std::printf("%02x", static_cast<uint8_t>(c));
                std::printf("\nfrom %d bars %d notes %zu\n", guide.fromBar, guide.bars, guide.notes.size());
            } else if (phase == static_cast<int>(stemd::GuideRecorder::Phase::Done)) {
                std::printf("error %s\n", error.c_str());
            } else {
                std::printf("phase %d why %d\n", phase, why);
            }
        } else if (op == "b64") {  // round trip of HEX through base64
            std::string hex, bytes, back;
            in >> hex;
            for (size_t i = 0; i + 1 < hex.size(); i += 2) bytes += static_cast<char>(std::stoul(hex.substr(i, 2), nullptr, 16));
            const std::string text = stemd::base64Encode(bytes);
            const bool ok = stemd::base64Decode(text, back, 1u << 20);
            std::printf("b64 %s %d\n", text.c_str(), ok && back == bytes ? 1 : 0);
        }
        std::fflush(stdout);
    }
    return 0;
}
