// The request that the link's unit test (link_test.cpp) and its fuzzer (fuzz_packets.cpp) open before
// feeding a LinkSession bytes: 2 bars from bar 3 (start_bar 2), 2 variations, stereo.
#pragma once

#include <cstdint>

#include "daemon_link.hpp"

namespace stemd {

inline Request two_bar_request(const char* id, const char* bpm, const char* meter, int32_t sample_rate,
                               int64_t seed) {
    Request r;
    r.id = id;
    r.bars = 2;
    r.variations = 2;
    r.bpm = bpm;
    r.meter = meter;
    r.start_bar = 2;
    r.sample_rate = sample_rate;
    r.channels = 2;
    r.seed = seed;
    return r;
}

}  // namespace stemd
