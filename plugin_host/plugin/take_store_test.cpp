// The take store's parts, driven from tests/test_plugin_build.py against stemd.takes and Python's json:
//   take_store_test name PROMPT BAR TAKE VARIATION NAMED   the take's file name (no extension)
//   take_store_test wav PATH FRAMES RATE                   writes a float32 stereo WAV: left i/1024, right -i/2048
//   take_store_test readwav PATH MAXFRAMES                 "frames rate" then "left right" per frame
//   take_store_test json < TEXT                            "ok <type>" or "error <why>"
//   take_store_test sidecar DELIVERY < DAEMON_JSON         the sidecar with DELIVERY added ("" if refused)
//   take_store_test takes < STATE                          the takes state read and written again
//   take_store_test residecar DELIVERY < SIDECAR           a written sidecar's daemon part with DELIVERY instead,
//                                                          then "received: <its old delivery's received>"
#include "take_store.hpp"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

using namespace stemd;

static std::string readStdin()
{
    return std::string(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
}

int main(int argc, char** argv)
{
    const std::string mode = argc > 1 ? argv[1] : "";
    if (mode == "name" && argc == 7) {
        std::puts(takeName(argv[2], std::atoi(argv[3]), std::atoi(argv[4]), std::atoi(argv[5]), std::atoi(argv[6]) != 0)
                      .c_str());
        return 0;
    }
    if (mode == "wav" && argc == 5) {
        const long frames = std::atol(argv[3]);
        std::vector<float> audio(static_cast<size_t>(frames) * 2);
        for (long i = 0; i < frames; ++i) {
            audio[static_cast<size_t>(i) * 2] = static_cast<float>(i % 1024) / 1024.0f;
            audio[static_cast<size_t>(i) * 2 + 1] = static_cast<float>(-(i % 2048)) / 2048.0f;
        }
        std::string error;
        const bool ok = atomicWrite(argv[2], wavFloat32(audio.data(), frames, 2, static_cast<uint32_t>(std::atol(argv[4]))), error);
        if (!ok) std::fprintf(stderr, "%s\n", error.c_str());
        return ok ? 0 : 1;
    }
    if (mode == "readwav" && argc == 4) {
        std::vector<float> audio;
        uint32_t rate = 0;
        std::string error;
        if (!readWav(argv[2], std::atol(argv[3]), audio, rate, error)) {
            std::printf("error %s\n", error.c_str());
            return 0;
        }
        std::printf("%zu %u\n", audio.size() / 2, rate);
        for (size_t i = 0; i < audio.size(); i += 2) std::printf("%.9g %.9g\n", audio[i], audio[i + 1]);
        return 0;
    }
    if (mode == "json" && argc == 2) {
        Json value;
        std::string error;
        if (!parseJson(readStdin(), value, error)) {
            std::printf("error %s\n", error.c_str());
            return 0;
        }
        const char* names[] = {"null", "bool", "number", "string", "array", "object"};
        std::printf("ok %s\n", names[static_cast<int>(value.type)]);
        if (value.type == Json::Type::String) std::printf("%s\n", jsonString(value.text).c_str());
        return 0;
    }
    if (mode == "sidecar" && argc == 3) {
        std::fputs(sidecarWithDelivery(readStdin(), argv[2]).c_str(), stdout);
        return 0;
    }
    if (mode == "residecar" && argc == 3) {
        std::string received;
        const std::string daemon = daemonSidecarOf(readStdin(), received);
        std::fputs(daemon.empty() ? "" : sidecarWithDelivery(daemon, argv[2]).c_str(), stdout);
        std::printf("received: %s\n", received.c_str());
        return 0;
    }
    if (mode == "takes" && argc == 2) {
        std::vector<TakeRecord> takes;
        std::string error;
        const bool ok = takesFromJson(readStdin(), takes, error);
        std::fprintf(stderr, "%s\n", error.c_str());
        if (!ok) return 1;
        std::puts(takesToJson(takes).c_str());
        return 0;
    }
    std::fprintf(stderr, "usage: take_store_test name|wav|readwav|json|sidecar|residecar|takes ...\n");
    return 2;
}
