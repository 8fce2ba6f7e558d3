// libFuzzer harness over everything a network byte reaches in the stemd plugin: the OSC decoder
// (messages and bundles, every argument read), the OSC 1.0 framing reader, and the link's event
// parsing and checks (LinkSession, with one open request shaped like the recorded seed traffic).
//
//   make -C plugin_host/plugin fuzz && build/plugin/fuzz_packets -runs=100000 CORPUS_DIR
//
// The seed corpus (tests/test_plugin_fuzz.py) is a real click daemon's framed TCP replies to the
// generate request below.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "daemon_link.hpp"
#include "framing.hpp"
#include "link_fixtures.hpp"
#include "osc.hpp"

namespace {

volatile uint64_t g_sink = 0;  // keeps every read alive under the optimiser

void touch(const void* data, size_t size) {
    const uint8_t* p = static_cast<const uint8_t*>(data);
    uint64_t sum = 0;
    for (size_t k = 0; k < size; ++k) sum += p[k];
    g_sink = g_sink + sum;
}

void touch(const std::string& text) { touch(text.data(), text.size()); }

class ReadEverything final : public stemd::osc::MessageVisitor {
public:
    void message(const stemd::osc::Message& m) override {
        touch(m.address.data(), m.address.size());
        stemd::osc::ArgReader reader(m);
        stemd::osc::Arg arg;
        size_t n = 0;
        while (reader.next(arg)) {
            ++n;
            touch(arg.s.data(), arg.s.size());
            if (arg.data != nullptr) touch(arg.data, arg.size);
            g_sink = g_sink + uint64_t(arg.i);
        }
        // a message the decoder passed reads back whole
        if (reader.error() != stemd::osc::Error::None || n != m.count()) __builtin_trap();
    }
};

class Listener final : public stemd::DaemonListener {
public:
    size_t events = 0;  // every call below but onConnection counts one (the trace mode prints it)
    void onConnection(stemd::ConnectionState, const std::string& message) override { touch(message); }
    void onModels(const std::vector<stemd::ModelRow>& rows) override {
        ++events;
        for (const auto& r : rows) {
            touch(r.name);
            touch(r.weights_sha256);
        }
    }
    void onAccepted(const std::string& id) override {
        ++events; touch(id); }
    void onQueued(const std::string& id, int32_t) override {
        ++events; touch(id); }
    void onProgress(const std::string& id, float, int32_t) override {
        ++events; touch(id); }
    void onChunk(const std::string& id, int32_t, int32_t, int64_t, int32_t, int32_t channels, const float* audio,
                 size_t frames) override {
        ++events;
        touch(id);
        touch(audio, frames * size_t(channels) * sizeof(float));
    }
    void onSidecar(const std::string& id, int32_t, const std::string& json) override {
        ++events;
        touch(id);
        touch(json);
    }
    void onTake(const std::string& id, int32_t, const std::string& path) override {
        ++events;
        touch(id);
        touch(path);
    }
    void onDone(const std::string& id) override {
        ++events; touch(id); }
    void onCancelled(const std::string& id) override {
        ++events; touch(id); }
    void onError(const std::string& id, const std::string& code, const std::string& message) override {
        ++events;
        touch(id);
        touch(code);
        touch(message);
    }
};

// The request the seed traffic answers (tests/test_plugin_fuzz.py asks the daemon for exactly this:
// 999 BPM 1/32 at 8 kHz is 60 frames a bar, which keeps the seed inputs small).
stemd::Request seed_request() {
    stemd::Request r = stemd::two_bar_request("fuzz", "999", "1/32", 8000, 1);
    r.prompt = "click";
    return r;
}

// STEMD_FUZZ_TRACE=1: print what the link made of each input (fuzz_packets FILE... runs just those files),
// so a test can check that the seed traffic is read as good traffic and not dropped at its first byte.
const bool g_trace = std::getenv("STEMD_FUZZ_TRACE") != nullptr;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    // 1. the bytes as one unframed packet
    ReadEverything visitor;
    if (size > 4) stemd::osc::for_each_message(data + 4, size - 4, visitor);
    stemd::osc::for_each_message(data, size, visitor);

    // 2. the bytes as a framed stream, every packet decoded
    stemd::framing::Reader reader;  // the plugin's own cap, 64 MiB + 64 KiB
    const uint8_t* p = data;
    size_t left = size;
    while (reader.consume(p, left) == stemd::framing::Reader::Status::Packet)
        stemd::osc::for_each_message(reader.packet(), reader.packet_size(), visitor);

    // 3. the bytes as what the daemon sent on a connection with a request open: at once, and in pieces
    const stemd::Request request = seed_request();
    for (size_t piece : {size_t(0), size_t(7), size_t(4096)}) {
        Listener listener;
        stemd::LinkSession session(listener);
        session.open(request);
        size_t at = 0;
        bool alive = true;
        while (alive && at < size) {
            const size_t n = piece == 0 ? size : std::min(piece, size - at);
            alive = session.feed(data + at, n);
            at += n;
        }
        if (!alive && session.why().empty()) __builtin_trap();  // a drop always says why
        if (g_trace && piece == 0)
            std::fprintf(stderr, "stemd-fuzz-trace events=%zu alive=%d open=%zu why=%s\n", listener.events,
                         alive ? 1 : 0, session.open_requests(), session.why().c_str());
        session.close_all("connection_lost", "fuzz");
    }
    return 0;
}
