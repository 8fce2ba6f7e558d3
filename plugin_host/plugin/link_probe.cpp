// stemd_link_probe: the plugin's DaemonLink on the command line, one JSON object per event on stdout.
//
//   stemd_link_probe --port 9130 --generate t1 --bars 2 --bpm 97 --meter 3/4 --start-bar 2 --variations 2
//   stemd_link_probe --port 9130 --seconds 3          # just connect (and reconnect), printing the states
//   --cancel-after N: cancel the request (from the main thread) once N chunks have arrived.
//   --early 1: send the request while the first connection is being made (from the Connecting event),
//   not after the models reply: the link must hold it and send it once connected.
//
// Exit status: 0 when the request ended with done (or, with no request, after --seconds), 1 when it
// ended with an error or was cancelled, 2 on bad arguments, 3 when --seconds ran out first.
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>

#include "daemon_link.hpp"
#include "json_escape.hpp"

namespace {

std::string json_string(const std::string& text) { return stemd::json_escape(text); }

class Printer final : public stemd::DaemonListener {
public:
    std::mutex mutex;
    std::condition_variable changed;
    bool ready = false;     // connected and the models reply has arrived
    int finished = -1;      // 0 done, 1 error or cancelled
    long long chunks = 0;
    std::string request_id;
    stemd::DaemonLink* early = nullptr;  // --early: send `request` from the first Connecting event
    stemd::Request request;

    void line(const std::string& text) {
        std::fputs((text + "\n").c_str(), stdout);
        std::fflush(stdout);
    }

    void end(const std::string& id, int status) {
        std::lock_guard<std::mutex> lock(mutex);
        if (id == request_id && finished < 0) finished = status;
        changed.notify_all();
    }

    void onConnection(stemd::ConnectionState state, const std::string& message) override {
        line(std::string("{\"event\":\"connection\",\"state\":\"") + stemd::connection_state_name(state) +
             "\",\"message\":" + json_string(message) + "}");
        if (state == stemd::ConnectionState::Connecting && early != nullptr) {
            early->send_generate(request);
            early = nullptr;
        }
        if (state != stemd::ConnectionState::Connected) {
            std::lock_guard<std::mutex> lock(mutex);
            ready = false;
        }
    }
    void onModels(const std::vector<stemd::ModelRow>& rows) override {
        std::string text = "{\"event\":\"models\",\"rows\":[";
        for (size_t k = 0; k < rows.size(); ++k) {
            const auto& r = rows[k];
            text += std::string(k ? "," : "") + "[" + json_string(r.name) + "," + json_string(r.family) + "," +
                    (r.loaded ? "1" : "0") + "," + json_string(r.device) + "," + json_string(r.dtype) + "," +
                    std::to_string(r.bytes) + "," + json_string(r.license) + "," + (r.commercial ? "1" : "0") +
                    "," + json_string(r.weights_sha256) + "]";
        }
        line(text + "]}");
        std::lock_guard<std::mutex> lock(mutex);
        ready = true;
        changed.notify_all();
    }
    void onAccepted(const std::string& id) override {
        line("{\"event\":\"accepted\",\"id\":" + json_string(id) + "}");
    }
    void onQueued(const std::string& id, int32_t ahead) override {
        line("{\"event\":\"queued\",\"id\":" + json_string(id) + ",\"ahead\":" + std::to_string(ahead) + "}");
    }
    void onProgress(const std::string& id, float fraction, int32_t bars_done) override {
        char number[32];
        std::snprintf(number, sizeof number, "%.6g", double(fraction));
        line("{\"event\":\"progress\",\"id\":" + json_string(id) + ",\"fraction\":" + number +
             ",\"bars_done\":" + std::to_string(bars_done) + "}");
    }
    void onChunk(const std::string& id, int32_t variation, int32_t bar_index, int64_t start_sample,
                 int32_t sample_rate, int32_t channels, const float* audio, size_t frames) override {
        // where the first sound is inside the bar, and how loud the bar gets: enough to check a click
        long long first = -1;
        float peak = 0.0f;
        for (size_t f = 0; f < frames; ++f) {
            for (int32_t c = 0; c < channels; ++c) {
                const float x = std::fabs(audio[f * size_t(channels) + size_t(c)]);
                if (x > peak) peak = x;
                if (first < 0 && x > 1e-4f) first = (long long)f;
            }
        }
        char number[32];
        std::snprintf(number, sizeof number, "%.6g", double(peak));
        {
            std::lock_guard<std::mutex> lock(mutex);
            ++chunks;
            changed.notify_all();
        }
        line("{\"event\":\"chunk\",\"id\":" + json_string(id) + ",\"variation\":" + std::to_string(variation) +
             ",\"bar_index\":" + std::to_string(bar_index) + ",\"start_sample\":" + std::to_string(start_sample) +
             ",\"sample_rate\":" + std::to_string(sample_rate) + ",\"channels\":" + std::to_string(channels) +
             ",\"frames\":" + std::to_string(frames) + ",\"first_sound\":" + std::to_string(first) +
             ",\"peak\":" + number + "}");
    }
    void onSidecar(const std::string& id, int32_t variation, const std::string& json) override {
        line("{\"event\":\"sidecar\",\"id\":" + json_string(id) + ",\"variation\":" + std::to_string(variation) +
             ",\"json\":" + json_string(json) + "}");
    }
    void onTake(const std::string& id, int32_t variation, const std::string& path) override {
        line("{\"event\":\"take\",\"id\":" + json_string(id) + ",\"variation\":" + std::to_string(variation) +
             ",\"path\":" + json_string(path) + "}");
    }
    void onDone(const std::string& id) override {
        line("{\"event\":\"done\",\"id\":" + json_string(id) + "}");
        end(id, 0);
    }
    void onCancelled(const std::string& id) override {
        line("{\"event\":\"cancelled\",\"id\":" + json_string(id) + "}");
        end(id, 1);
    }
    void onError(const std::string& id, const std::string& code, const std::string& message) override {
        line("{\"event\":\"error\",\"id\":" + json_string(id) + ",\"code\":" + json_string(code) +
             ",\"message\":" + json_string(message) + "}");
        end(id, 1);
    }
};

bool parse_long(const char* text, long long lo, long long hi, long long& out) {
    char* end = nullptr;
    errno = 0;
    const long long value = std::strtoll(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || value < lo || value > hi) return false;
    out = value;
    return true;
}

int usage(const char* problem) {
    std::fprintf(stderr,
                 "stemd_link_probe: %s\n"
                 "usage: stemd_link_probe --port N [--host H] [--token T] [--seconds S]\n"
                 "       [--generate ID [--prompt P] [--model M] [--bars N] [--variations N] [--bpm X]\n"
                 "        [--meter N/D] [--start-bar N (0-based)] [--sample-rate N] [--seed N]]\n",
                 problem);
    return 2;
}

}  // namespace

int main(int argc, char** argv) {
    std::string host = "127.0.0.1", token;
    long long port = -1, seconds = 30, cancel_after = -1;
    bool generate = false;
    bool early = false;
    stemd::Request request;
    for (int k = 1; k < argc; ++k) {
        const std::string flag = argv[k];
        if (k + 1 >= argc) return usage(("missing value after " + flag).c_str());
        const char* value = argv[++k];
        long long n = 0;
        if (flag == "--host") host = value;
        else if (flag == "--token") token = value;
        else if (flag == "--port") { if (!parse_long(value, 1, 65535, port)) return usage("--port must be 1..65535"); }
        else if (flag == "--seconds") { if (!parse_long(value, 1, 3600, seconds)) return usage("--seconds must be 1..3600"); }
        else if (flag == "--generate") { generate = true; request.id = value; }
        else if (flag == "--cancel-after") { if (!parse_long(value, 0, 100000, cancel_after)) return usage("bad --cancel-after"); }
        else if (flag == "--early") early = std::strcmp(value, "1") == 0;
        else if (flag == "--prompt") request.prompt = value;
        else if (flag == "--model") request.model = value;
        else if (flag == "--bpm") request.bpm = value;
        else if (flag == "--meter") request.meter = value;
        else if (flag == "--bars") { if (!parse_long(value, -1000, 1000, n)) return usage("bad --bars"); request.bars = int32_t(n); }
        else if (flag == "--variations") { if (!parse_long(value, -1000, 1000, n)) return usage("bad --variations"); request.variations = int32_t(n); }
        else if (flag == "--start-bar") { if (!parse_long(value, -1000, 10000000, n)) return usage("bad --start-bar"); request.start_bar = int32_t(n); }
        else if (flag == "--sample-rate") { if (!parse_long(value, 0, 10000000, n)) return usage("bad --sample-rate"); request.sample_rate = int32_t(n); }
        else if (flag == "--seed") { if (!parse_long(value, 0, (1LL << 62), n)) return usage("bad --seed"); request.seed = n; }
        else return usage(("unknown option " + flag).c_str());
    }
    if (port < 0) return usage("--port is required");
    if (generate) {
        const std::string problem = stemd::validate_request(request);
        if (!problem.empty()) return usage(problem.c_str());
    }

    Printer printer;
    printer.request_id = request.id;
    stemd::DaemonLink link(printer);
    if (generate && early) {
        printer.early = &link;
        printer.request = request;
    }
    if (!link.start(host, uint16_t(port), token)) return usage("could not start the network thread");
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
    int status = generate ? 3 : 0;
    {
        std::unique_lock<std::mutex> lock(printer.mutex);
        if (generate) {
            // from this (non-audio) thread, as the plugin does: once connected and the models are known
            if (printer.changed.wait_until(lock, deadline, [&] { return printer.ready; })) {
                lock.unlock();
                if (!early) link.send_generate(request);
                lock.lock();
                if (cancel_after >= 0 &&
                    printer.changed.wait_until(lock, deadline, [&] {
                        return printer.chunks >= cancel_after || printer.finished >= 0;
                    })) {
                    lock.unlock();
                    link.cancel(request.id);
                    printer.line("{\"event\":\"cancel_sent\"}");
                    lock.lock();
                }
                if (printer.changed.wait_until(lock, deadline, [&] { return printer.finished >= 0; }))
                    status = printer.finished;
            }
        } else {
            printer.changed.wait_until(lock, deadline, [] { return false; });
        }
    }
    if (status == 3) printer.line("{\"event\":\"timeout\"}");
    const auto before = std::chrono::steady_clock::now();
    link.stop();
    const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - before);
    printer.line("{\"event\":\"exit\",\"status\":" + std::to_string(status) +
                 ",\"stop_ms\":" + std::to_string(took.count()) + "}");
    return status;
}
