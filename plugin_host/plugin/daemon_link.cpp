// The stemd plugin's network side: see daemon_link.hpp. Two parts: LinkSession (the protocol of one
// connection: bytes in, checked events out; no sockets) and DaemonLink (the thread that owns the socket,
// connects, reconnects with back-off, and is woken through a self-pipe so stop() joins at once).
#include "daemon_link.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <limits>
#include <map>
#include <mutex>
#include <system_error>
#include <thread>
#include <utility>

#include "framing.hpp"
#include "osc.hpp"

#ifndef _WIN32
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>
#endif

namespace stemd {

const char* connection_state_name(ConnectionState state) {
    switch (state) {
        case ConnectionState::Stopped: return "stopped";
        case ConnectionState::Connecting: return "connecting";
        case ConnectionState::Connected: return "connected";
        case ConnectionState::Unreachable: return "unreachable";
        case ConnectionState::Dropped: return "dropped";
    }
    return "unknown";
}

// ---------------------------------------------------------------------------------------------------
// Requests

namespace {

constexpr size_t kMaxSidecar = 64 * 1024;
constexpr size_t kMaxContinuationBytes = 64u << 20;  // the daemon's limit on a continuation
constexpr size_t kMaxGuideBytes = 1u << 20;           // the daemon's limit on a guide SMF
// A chunk's audio buffer kept between chunks up to this size (a 48 kHz stereo bar of 4/4 at 60 BPM is
// 1.5 MiB); a larger one is let go after its chunk, as the framing reader does with its packet buffer.
constexpr size_t kKeepAudioBytes = 2u << 20;
constexpr int32_t kMaxModels = 1024;

bool id_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
           c == ':' || c == '-';
}

bool all_digits(const std::string& text, size_t from, size_t to) {
    if (from >= to) return false;
    for (size_t k = from; k < to; ++k)
        if (text[k] < '0' || text[k] > '9') return false;
    return true;
}

// "97", "137.5" or "275/2": what the daemon reads exactly (at most 32 characters, no exponent).
bool exact_number(const std::string& text) {
    if (text.empty() || text.size() > 32) return false;
    const size_t slash = text.find('/');
    if (slash != std::string::npos) return all_digits(text, 0, slash) && all_digits(text, slash + 1, text.size());
    const size_t dot = text.find('.');
    if (dot == std::string::npos) return all_digits(text, 0, text.size());
    return all_digits(text, 0, dot) && all_digits(text, dot + 1, text.size());
}

size_t utf8_length(const std::string& text) {
    size_t n = 0;
    for (unsigned char c : text)
        if ((c & 0xC0) != 0x80) ++n;
    return n;
}

std::string range_error(const char* key, long long lo, long long hi, long long got) {
    return std::string(key) + " must be " + std::to_string(lo) + ".." + std::to_string(hi) + ", got " +
           std::to_string(got);
}

}  // namespace

std::string validate_request(const Request& r) {
    if (r.id.empty() || r.id.size() > 128 || !std::all_of(r.id.begin(), r.id.end(), id_char))
        return "request id must be 1-128 characters of letters, digits, _ . : -";
    if (r.prompt.find('\0') != std::string::npos || utf8_length(r.prompt) > 2000)
        return "prompt must be at most 2000 characters, without NUL";
    if (r.model.find('\0') != std::string::npos || utf8_length(r.model) > 256)
        return "model must be at most 256 characters, without NUL";
    if (r.bars < 1 || r.bars > 256) return range_error("bars", 1, 256, r.bars);
    if (r.variations < 1 || r.variations > 16) return range_error("variations", 1, 16, r.variations);
    if (r.start_bar < 0 || r.start_bar > 1000000) return range_error("start_bar", 0, 1000000, r.start_bar);
    if (r.sample_rate < 8000 || r.sample_rate > 192000)
        return range_error("sample_rate", 8000, 192000, r.sample_rate);
    if (r.channels < 1 || r.channels > 2) return range_error("channels", 1, 2, r.channels);
    if (!exact_number(r.bpm)) return "bpm must be a decimal or a ratio like \"275/2\" (at most 32 characters)";
    const size_t slash = r.meter.find('/');
    if (slash == std::string::npos || slash > 3 || r.meter.size() - slash - 1 > 3 || !all_digits(r.meter, 0, slash) ||
        !all_digits(r.meter, slash + 1, r.meter.size()))
        return "meter must be \"n/d\" with 1-3 digits each side";
    if (r.key.find('\0') != std::string::npos || utf8_length(r.key) > 64) return "key must be at most 64 characters, without NUL";
    if (r.steps != 0 && (r.steps < 1 || r.steps > 200)) return range_error("steps", 1, 200, r.steps);
    if (r.guidance > 20.0f) return "guidance must be 0..20";
    if (r.strength > 1.0f) return "strength must be 0..1";
    if (r.temperature != 0.0f && !(r.temperature >= 0.01f && r.temperature <= 5.0f)) return "temperature must be 0.01..5";
    if (r.continuation) {
        if (r.continuation_channels < 1 || r.continuation_channels > 2)
            return range_error("continuation_channels", 1, 2, r.continuation_channels);
        if (r.continuation_rate < 8000 || r.continuation_rate > 192000)
            return range_error("continuation_rate", 8000, 192000, r.continuation_rate);
        const size_t floats = r.continuation->size();
        if (floats == 0 || floats % size_t(r.continuation_channels) != 0)
            return "continuation must be whole frames of continuation_channels floats";
        if (floats > kMaxContinuationBytes / sizeof(float)) return "continuation must be at most 64 MiB";
    }
    if (r.guide && (r.guide->empty() || r.guide->size() > kMaxGuideBytes)) return "guide must be 1 byte to 1 MiB";
    if (r.chords.size() > 4096 || r.chords.find('\0') != std::string::npos)
        return "chords must be at most 4096 bytes, without NUL";
    if (r.guide && !r.chords.empty()) return "a request goes with a guide or chords, not both";
    if (r.guide_strength > 1.0f) return "guide_strength must be 0..1";
    return "";
}

std::vector<uint8_t> encode_generate(const Request& r) {
    if (!validate_request(r).empty()) return {};
    osc::Builder b("/stemd/generate");
    b.s(r.id);
    b.s("prompt").s(r.prompt);
    b.s("bars").i(r.bars);
    b.s("bpm").s(r.bpm);
    b.s("meter").s(r.meter);
    b.s("start_bar").i(r.start_bar);
    b.s("sample_rate").i(r.sample_rate);
    b.s("channels").i(r.channels);
    b.s("variations").i(r.variations);
    if (r.seed >= 0) b.s("seed").h(r.seed);
    if (!r.model.empty()) b.s("model").s(r.model);
    if (!r.key.empty()) b.s("key").s(r.key);
    if (r.steps > 0) b.s("steps").i(r.steps);
    if (r.guidance >= 0.0f) b.s("guidance").f(r.guidance);
    if (r.strength >= 0.0f) b.s("strength").f(r.strength);
    if (r.temperature > 0.0f) b.s("temperature").f(r.temperature);
    if (r.continuation) {
        const std::vector<float>& audio = *r.continuation;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        std::vector<uint8_t> le(audio.size() * sizeof(float));  // the protocol's float32 is little-endian
        for (size_t i = 0; i < audio.size(); ++i) {
            uint32_t bits;
            std::memcpy(&bits, &audio[i], 4);
            for (int k = 0; k < 4; ++k) le[i * 4 + size_t(k)] = uint8_t(bits >> (8 * k));
        }
        b.s("continuation").b(le.data(), le.size());
#else
        b.s("continuation").b(reinterpret_cast<const uint8_t*>(audio.data()), audio.size() * sizeof(float));
#endif
        b.s("continuation_rate").i(r.continuation_rate);
        b.s("continuation_channels").i(r.continuation_channels);
    }
    if (r.guide) b.s("guide").b(r.guide->data(), r.guide->size());
    if (!r.chords.empty()) b.s("chords").s(r.chords);
    if (r.guide_strength >= 0.0f) b.s("guide_strength").f(r.guide_strength);
    return b.finish();
}

// ---------------------------------------------------------------------------------------------------
// LinkSession: one connection's protocol

namespace {

struct OpenRequest {
    int32_t sample_rate = 0;
    int32_t channels = 0;
    int32_t variations = 0;
    int32_t bars = 0;
    std::vector<int32_t> next_bar;     // per variation: the smallest bar_index the next chunk may have
    std::vector<int64_t> next_sample;  // per variation: where the bar after the last one starts
};

bool as_string(const osc::Arg& a, std::string_view& out) {
    if (!a.is_string()) return false;
    out = a.s;
    return true;
}

bool as_int32(const osc::Arg& a, int32_t& out) {
    if (!a.is_int() || a.i < std::numeric_limits<int32_t>::min() || a.i > std::numeric_limits<int32_t>::max())
        return false;
    out = int32_t(a.i);
    return true;
}

bool as_int64(const osc::Arg& a, int64_t& out) {
    if (!a.is_int()) return false;
    out = a.i;
    return true;
}

std::vector<uint8_t> framed(const std::vector<uint8_t>& packet) {
    std::vector<uint8_t> out;
    if (!packet.empty()) framing::append_framed(out, packet);
    return out;
}

std::string quoted(std::string_view text) {
    std::string out = "\"";
    out.append(text.substr(0, 80));
    if (text.size() > 80) out += "...";
    return out + "\"";
}

}  // namespace

struct LinkSession::State final : osc::MessageVisitor {
    State(DaemonListener& l, size_t max_packet) : listener(l), reader(max_packet) {}

    DaemonListener& listener;
    framing::Reader reader;
    std::map<std::string, OpenRequest, std::less<>> open;
    std::vector<float> audio;
    std::vector<ModelRow> rows;
    std::string why;
    bool failed = false;
    bool heard = false;

    void fail(std::string reason) {
        if (failed) return;
        failed = true;
        why = std::move(reason);
    }

    // The open request `id` names, or a failure: events for requests this link did not make are off.
    OpenRequest* find(std::string_view address, std::string_view id) {
        auto it = open.find(id);
        if (it == open.end()) {
            fail(std::string(address) + " for " + quoted(id) + ", a request this link has not open");
            return nullptr;
        }
        return &it->second;
    }

    // Reads exactly the first `n` arguments into `args` (more are allowed and ignored).
    bool args_of(const osc::Message& m, osc::Arg* args, size_t n) {
        if (m.count() < n) {
            fail(std::string(m.address) + " with " + std::to_string(m.count()) + " arguments, expected " +
                 std::to_string(n));
            return false;
        }
        osc::ArgReader args_in(m);
        for (size_t k = 0; k < n; ++k) {
            if (!args_in.next(args[k])) {
                fail(std::string(m.address) + ": " + osc::error_text(args_in.error()));
                return false;
            }
        }
        return true;
    }

    bool bad(const osc::Message& m, const char* what) {
        fail(std::string(m.address) + ": " + what);
        return false;
    }

    void message(const osc::Message& m) override {
        if (failed) return;
        const std::string_view a = m.address;
        if (a == "/stemd/chunk") return chunk(m);
        if (a == "/stemd/progress") return progress(m);
        if (a == "/stemd/accepted" || a == "/stemd/done" || a == "/stemd/cancelled") return id_only(m);
        if (a == "/stemd/queued") return queued(m);
        if (a == "/stemd/sidecar" || a == "/stemd/take") return sidecar_or_take(m);
        if (a == "/stemd/error") return error(m);
        if (a == "/stemd/models/reply") return models(m);
        if (a == "/stemd/bye") return bye(m);
        if (a == "/stemd/chunk/part") return (void)bad(m, "chunk parts were not asked for (no max_message)");
        // /stemd/pong (the hello's answer) and addresses newer than this link: nothing to do.
    }

    void id_only(const osc::Message& m) {
        osc::Arg args[1];
        std::string_view id;
        if (!args_of(m, args, 1)) return;
        if (!as_string(args[0], id)) return (void)bad(m, "the id must be a string");
        if (find(m.address, id) == nullptr) return;
        const std::string sid(id);
        if (m.address == "/stemd/accepted") {
            listener.onAccepted(sid);
        } else if (m.address == "/stemd/done") {
            open.erase(open.find(id));
            listener.onDone(sid);
        } else {
            open.erase(open.find(id));
            listener.onCancelled(sid);
        }
    }

    void queued(const osc::Message& m) {
        osc::Arg args[2];
        std::string_view id;
        int32_t ahead = 0;
        if (!args_of(m, args, 2)) return;
        if (!as_string(args[0], id) || !as_int32(args[1], ahead) || ahead < 0)
            return (void)bad(m, "expects <id:s> <ahead:i>=0..");
        if (find(m.address, id) == nullptr) return;
        listener.onQueued(std::string(id), ahead);
    }

    void progress(const osc::Message& m) {
        osc::Arg args[3];
        std::string_view id;
        int32_t bars_done = 0;
        if (!args_of(m, args, 3)) return;
        const bool fraction_ok = (args[1].tag == 'f' || args[1].tag == 'd') && std::isfinite(args[1].f) &&
                                 args[1].f >= 0.0 && args[1].f <= 1.0;
        if (!as_string(args[0], id) || !fraction_ok || !as_int32(args[2], bars_done) || bars_done < 0)
            return (void)bad(m, "expects <id:s> <fraction:f>=0..1 <bars_done:i>=0..");
        if (find(m.address, id) == nullptr) return;
        listener.onProgress(std::string(id), float(args[1].f), bars_done);
    }

    void chunk(const osc::Message& m) {
        osc::Arg args[7];
        std::string_view id;
        int32_t variation = 0, bar = 0, rate = 0, channels = 0;
        int64_t start = 0;
        if (!args_of(m, args, 7)) return;
        if (!as_string(args[0], id) || !as_int32(args[1], variation) || !as_int32(args[2], bar) ||
            !as_int64(args[3], start) || !as_int32(args[4], rate) || !as_int32(args[5], channels) ||
            args[6].tag != 'b')
            return (void)bad(m, "expects <id:s> <variation:i> <bar_index:i> <start_sample:i|h> <sample_rate:i> "
                                "<channels:i> <audio:b>");
        if (bar < 0 || start < 0) return (void)bad(m, "bar_index and start_sample must be >= 0");
        if (channels < 1 || channels > 2) return (void)bad(m, "channels must be 1 or 2");
        if (rate < 8000 || rate > 192000) return (void)bad(m, "sample_rate must be 8000..192000");
        const size_t bytes = args[6].size;
        const size_t frame_bytes = size_t(channels) * 4;
        if (bytes == 0 || bytes % frame_bytes != 0)
            return (void)bad(m, "the audio blob is not a whole number of float32 frames (frames*channels*4)");
        OpenRequest* r = find(m.address, id);
        if (r == nullptr) return;
        if (rate != r->sample_rate || channels != r->channels)
            return (void)bad(m, "sample_rate or channels differ from the request's");
        if (variation < 0 || variation >= r->variations) return (void)bad(m, "variation outside the request's");
        if (bar >= r->bars) return (void)bad(m, "bar_index past the request's bars");
        const size_t v = size_t(variation);
        if (bar < r->next_bar[v]) return (void)bad(m, "bar_index repeats or goes back");
        const size_t frames = bytes / frame_bytes;
        if (bar == r->next_bar[v] && bar > 0 && r->next_sample[v] >= 0 && start != r->next_sample[v])
            return (void)bad(m, "start_sample is not where the previous bar ended");
        if (start > std::numeric_limits<int64_t>::max() - int64_t(frames))
            return (void)bad(m, "start_sample + frames overflows");
        r->next_bar[v] = bar + 1;
        r->next_sample[v] = start + int64_t(frames);
        // float32 little-endian on the wire: copied out of the packet (aligned, and swapped on a big-endian host).
        audio.resize(frames * size_t(channels));
        std::memcpy(audio.data(), args[6].data, bytes);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        for (float& sample : audio) {
            uint32_t bits;
            std::memcpy(&bits, &sample, 4);
            bits = __builtin_bswap32(bits);
            std::memcpy(&sample, &bits, 4);
        }
#endif
        listener.onChunk(std::string(id), variation, bar, start, rate, channels, audio.data(), frames);
        if (audio.capacity() * sizeof(float) > kKeepAudioBytes) std::vector<float>().swap(audio);
    }

    void sidecar_or_take(const osc::Message& m) {
        osc::Arg args[3];
        std::string_view id, text;
        int32_t variation = 0;
        if (!args_of(m, args, 3)) return;
        if (!as_string(args[0], id) || !as_int32(args[1], variation) || !as_string(args[2], text))
            return (void)bad(m, "expects <id:s> <variation:i> <text:s>");
        const bool sidecar = m.address == "/stemd/sidecar";
        if (sidecar && text.size() > kMaxSidecar) return (void)bad(m, "sidecar over 64 KiB");
        if (!sidecar && text.empty()) return (void)bad(m, "empty take path");
        OpenRequest* r = find(m.address, id);
        if (r == nullptr) return;
        if (variation < 0 || variation >= r->variations) return (void)bad(m, "variation outside the request's");
        if (sidecar)
            listener.onSidecar(std::string(id), variation, std::string(text));
        else
            listener.onTake(std::string(id), variation, std::string(text));
    }

    void error(const osc::Message& m) {
        osc::Arg args[3];
        std::string_view id, code, text;
        if (!args_of(m, args, 3)) return;
        if (!as_string(args[0], id) || !as_string(args[1], code) || !as_string(args[2], text))
            return (void)bad(m, "expects <id:s> <code:s> <message:s>");
        // A request ends with exactly one of done, cancelled or error. An error naming a request that has
        // ended already answers a message about it (`unknown_request` for a cancel that crossed its done):
        // not passed on, so a finished take is never marked failed. "" (no request) always is.
        auto it = open.find(id);
        if (it == open.end() && !id.empty()) return;
        if (it != open.end()) open.erase(it);
        listener.onError(std::string(id), std::string(code), std::string(text));
    }

    void models(const osc::Message& m) {
        osc::ArgReader args_in(m);
        osc::Arg arg;
        int32_t count = 0;
        if (!args_in.next(arg) || !as_int32(arg, count) || count < 0 || count > kMaxModels)
            return (void)bad(m, "expects <count:i> first");
        if (m.count() < 1 + size_t(count) * 9) return (void)bad(m, "fewer than 9 values per model");
        rows.clear();
        for (int32_t k = 0; k < count; ++k) {
            osc::Arg v[9];
            for (auto& item : v)
                if (!args_in.next(item)) return (void)bad(m, osc::error_text(args_in.error()));
            ModelRow row;
            std::string_view text[6];
            int32_t loaded = 0, commercial = 0;
            if (!as_string(v[0], text[0]) || !as_string(v[1], text[1]) || !as_int32(v[2], loaded) ||
                !as_string(v[3], text[2]) || !as_string(v[4], text[3]) || !as_int64(v[5], row.bytes) ||
                !as_string(v[6], text[4]) || !as_int32(v[7], commercial) || !as_string(v[8], text[5]))
                return (void)bad(m, "a model row is not <name:s> <family:s> <loaded:i> <device:s> <dtype:s> "
                                    "<bytes:i|h> <license:s> <commercial:i> <weights_sha256:s>");
            row.name = text[0];
            row.family = text[1];
            row.loaded = loaded != 0;
            row.device = text[2];
            row.dtype = text[3];
            row.license = text[4];
            row.commercial = commercial != 0;
            row.weights_sha256 = text[5];
            rows.push_back(std::move(row));
        }
        listener.onModels(rows);
    }

    void bye(const osc::Message& m) {
        osc::Arg args[1];
        std::string_view text;
        if (m.count() >= 1 && args_of(m, args, 1)) as_string(args[0], text);
        fail("the daemon is stopping" + (text.empty() ? std::string() : ": " + std::string(text)));
    }
};

LinkSession::LinkSession(DaemonListener& listener, size_t max_packet)
    : state_(std::make_unique<State>(listener, max_packet)) {}
LinkSession::~LinkSession() = default;

const std::string& LinkSession::why() const { return state_->why; }
bool LinkSession::heard() const { return state_->heard; }
size_t LinkSession::open_requests() const { return state_->open.size(); }
size_t LinkSession::partial_bytes() const { return state_->reader.buffered(); }
size_t LinkSession::held_bytes() const {
    return state_->reader.capacity() + state_->audio.capacity() * sizeof(float);
}

bool LinkSession::feed(const uint8_t* data, size_t size) {
    State& s = *state_;
    while (!s.failed) {
        const framing::Reader::Status status = s.reader.consume(data, size);
        if (status == framing::Reader::Status::NeedMore) break;
        if (status == framing::Reader::Status::Failed) {
            s.fail(std::string(framing::error_text(s.reader.error())) + ": a packet of " +
                   std::to_string(s.reader.bad_size()) + " bytes (the limit is " +
                   std::to_string(s.reader.max_packet()) + ")");
            break;
        }
        const osc::Error e = osc::for_each_message(s.reader.packet(), s.reader.packet_size(), s);
        if (e != osc::Error::None) {
            s.fail(std::string("malformed packet of ") + std::to_string(s.reader.packet_size()) +
                   " bytes: " + osc::error_text(e));
            break;
        }
        if (!s.failed) s.heard = true;
    }
    return !s.failed;
}

std::vector<uint8_t> LinkSession::greeting(const std::string& token) {
    std::vector<uint8_t> out;
    if (!token.empty()) {
        const std::vector<uint8_t> hello = osc::Builder("/stemd/hello").s(token).finish();
        if (!hello.empty()) framing::append_framed(out, hello);
    }
    framing::append_framed(out, osc::Builder("/stemd/models").finish());
    return out;
}

std::vector<uint8_t> LinkSession::open(const Request& request) {
    State& s = *state_;
    const std::string problem = validate_request(request);
    if (!problem.empty()) {
        s.listener.onError(request.id, "bad_request", problem);
        return {};
    }
    if (s.open.count(request.id) != 0) {
        s.listener.onError(request.id, "duplicate_id", "a request with this id is already open on this link");
        return {};
    }
    OpenRequest r;
    r.sample_rate = request.sample_rate;
    r.channels = request.channels;
    r.variations = request.variations;
    r.bars = request.bars;
    r.next_bar.assign(size_t(request.variations), 0);
    r.next_sample.assign(size_t(request.variations), -1);
    s.open.emplace(request.id, std::move(r));
    return framed(encode_generate(request));
}

std::vector<uint8_t> LinkSession::cancel(const std::string& id) {
    if (state_->open.count(id) == 0) return {};
    return framed(osc::Builder("/stemd/cancel").s(id).finish());
}

void LinkSession::close_all(const std::string& code, const std::string& message) {
    std::map<std::string, OpenRequest, std::less<>> gone;
    gone.swap(state_->open);
    for (const auto& entry : gone) state_->listener.onError(entry.first, code, message);
}

// ---------------------------------------------------------------------------------------------------
// DaemonLink: the network thread

namespace {

struct Command {
    bool generate = true;  // else a cancel
    Request request;       // generate
    std::string id;        // cancel
};

}  // namespace

#ifndef _WIN32

namespace {

// An owned file descriptor.
class Fd {
public:
    Fd() = default;
    explicit Fd(int fd) : fd_(fd) {}
    ~Fd() { reset(); }
    Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
    Fd& operator=(Fd&& other) noexcept {
        if (this != &other) {
            reset();
            fd_ = std::exchange(other.fd_, -1);
        }
        return *this;
    }
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
    int get() const { return fd_; }
    bool valid() const { return fd_ >= 0; }
    void reset() {
        if (fd_ >= 0) ::close(fd_);
        fd_ = -1;
    }

private:
    int fd_ = -1;
};

bool set_nonblocking(int fd) {
    const int flags = ::fcntl(fd, F_GETFL, 0);
    if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) return false;
    return ::fcntl(fd, F_SETFD, FD_CLOEXEC) == 0;
}

using Clock = std::chrono::steady_clock;

int ms_until(Clock::time_point deadline) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    return int(std::max<long long>(0, std::min<long long>(left, 60000)));
}

using AddrList = std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)>;

addrinfo address_hints(int flags) {
    addrinfo h{};
    h.ai_family = AF_UNSPEC;
    h.ai_socktype = SOCK_STREAM;
    h.ai_flags = AI_NUMERICSERV | flags;
    return h;
}

// Keeps this library mapped until the process ends. A lookup's helper thread may outlive the link (and
// the plugin: a resolver can hang for minutes); a host that unloads the plugin meanwhile would pull its
// code from under that thread. Done once, before the first helper starts.
void keep_module_loaded() {
    static std::once_flag once;
    std::call_once(once, [] {
        Dl_info info{};
        if (::dladdr(reinterpret_cast<void*>(&keep_module_loaded), &info) != 0 && info.dli_fname != nullptr)
            ::dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);  // never closed, by design
    });
}

// One getaddrinfo on a detached helper thread. The helper and the link share this state; whichever lets
// go last frees it (and the addresses, if nobody took them).
struct Lookup {
    std::mutex mutex;
    std::condition_variable finished;
    bool done = false;
    int rc = 0;
    addrinfo* found = nullptr;  // owned here until taken

    ~Lookup() {
        if (found != nullptr) ::freeaddrinfo(found);
    }

    // The lookup under way, or nullptr when its thread cannot be started.
    static std::shared_ptr<Lookup> start(const std::string& host, const std::string& service) {
        auto lookup = std::make_shared<Lookup>();
        keep_module_loaded();
#if defined(__cpp_exceptions)
        try {
            std::thread(run, lookup, host, service).detach();
        } catch (const std::system_error&) {
            return nullptr;
        }
#else
        std::thread(run, lookup, host, service).detach();
#endif
        return lookup;
    }

    static void run(std::shared_ptr<Lookup> lookup, std::string host, std::string service) {
        addrinfo* found = nullptr;
        const addrinfo hints = address_hints(0);
        const int rc = ::getaddrinfo(host.c_str(), service.c_str(), &hints, &found);
        std::lock_guard<std::mutex> lock(lookup->mutex);
        lookup->rc = rc;
        lookup->found = rc == 0 ? found : nullptr;
        lookup->done = true;
        lookup->finished.notify_all();
    }
};

}  // namespace

struct DaemonLink::Impl {
    std::string host;
    uint16_t port = 0;
    std::string token;
    int connect_timeout_ms = 3000;

    Fd wake_read, wake_write;
    std::thread thread;
    std::atomic<bool> stopping{false};
    std::mutex mutex;
    std::deque<Command> commands;  // guarded by mutex
    std::shared_ptr<Lookup> pending;  // the network thread's name lookup under way, if any

    void wake() {
        const uint8_t byte = 1;
        const ssize_t n = ::write(wake_write.get(), &byte, 1);  // full pipe: already awake
        (void)n;
    }

    void drain_wake() {
        uint8_t buffer[64];
        while (::read(wake_read.get(), buffer, sizeof buffer) > 0) {
        }
    }

    // From the plugin's threads: queues `command` and wakes the network thread.
    void push(Command command) {
        {
            std::lock_guard<std::mutex> lock(mutex);
            commands.push_back(std::move(command));
        }
        wake();
    }

    std::deque<Command> take_commands() {
        std::deque<Command> out;
        std::lock_guard<std::mutex> lock(mutex);
        out.swap(commands);
        return out;
    }

    std::string where() const { return host + ":" + std::to_string(port); }

    // Sleeps until `deadline` or stop(); requests that arrive meanwhile fail at once (nothing to send them on).
    void wait_disconnected(DaemonListener& listener, Clock::time_point deadline, const std::string& reason) {
        while (!stopping.load()) {
            pollfd p{wake_read.get(), POLLIN, 0};
            const int timeout = ms_until(deadline);
            const int n = ::poll(&p, 1, timeout);
            if (n > 0) drain_wake();
            for (Command& c : take_commands())
                if (c.generate)
                    listener.onError(c.request.id, "not_connected",
                                     "not connected to the daemon at " + where() + ": " + reason);
            if (Clock::now() >= deadline) return;
        }
    }

    // `host`'s addresses, or none and `why`. An address is read at once; a name is looked up on a
    // helper thread (lookup()) while this one waits at most connect_timeout_ms and wakes for stop(), so
    // a resolver that hangs never holds stop(). A lookup still under way when the wait ends is picked up
    // by the next attempt instead of starting another.
    AddrList resolve(std::string& why) {
        const std::string service = std::to_string(port);
        addrinfo* found = nullptr;
        const addrinfo hints = address_hints(AI_NUMERICHOST);
        const int rc = ::getaddrinfo(host.c_str(), service.c_str(), &hints, &found);
        if (rc == 0) return AddrList(found, &::freeaddrinfo);
        if (rc != EAI_NONAME) {
            why = "cannot resolve " + host + ": " + ::gai_strerror(rc);
            return AddrList(nullptr, &::freeaddrinfo);
        }
        if (!pending) pending = Lookup::start(host, service);
        if (!pending) {
            why = "cannot start a thread to look up " + host;
            return AddrList(nullptr, &::freeaddrinfo);
        }
        const Clock::time_point deadline = Clock::now() + std::chrono::milliseconds(connect_timeout_ms);
        std::unique_lock<std::mutex> lock(pending->mutex);
        while (!pending->done && !stopping.load() && Clock::now() < deadline)
            pending->finished.wait_for(lock, std::chrono::milliseconds(20));  // stop() is seen within 20 ms
        if (!pending->done) {
            why = stopping.load() ? "stopped" : "looking up " + host + " took over " +
                                                     std::to_string(connect_timeout_ms) + " ms";
            return AddrList(nullptr, &::freeaddrinfo);
        }
        const int result = pending->rc;
        AddrList list(std::exchange(pending->found, nullptr), &::freeaddrinfo);
        lock.unlock();
        pending.reset();
        if (result != 0) why = "cannot resolve " + host + ": " + ::gai_strerror(result);
        return list;
    }

    // A connected, non-blocking socket, or an invalid Fd and `why`.
    Fd connect_socket(std::string& why) {
        AddrList list = resolve(why);
        if (!list) return Fd();
        why = "no address for " + host;
        for (addrinfo* ai = list.get(); ai != nullptr && !stopping.load(); ai = ai->ai_next) {
            Fd fd(::socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol));
            if (!fd.valid() || !set_nonblocking(fd.get())) {
                why = std::string("socket: ") + std::strerror(errno);
                continue;
            }
#ifdef SO_NOSIGPIPE
            const int one_nosig = 1;
            ::setsockopt(fd.get(), SOL_SOCKET, SO_NOSIGPIPE, &one_nosig, sizeof one_nosig);
#endif
            if (::connect(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0) {
                if (errno != EINPROGRESS) {
                    why = std::strerror(errno);
                    continue;
                }
                const Clock::time_point deadline = Clock::now() + std::chrono::milliseconds(connect_timeout_ms);
                bool writable = false;
                while (!stopping.load()) {
                    pollfd p[2] = {{fd.get(), POLLOUT, 0}, {wake_read.get(), POLLIN, 0}};
                    const int n = ::poll(p, 2, ms_until(deadline));
                    if (n < 0 && errno != EINTR) break;
                    if (n > 0 && (p[1].revents & POLLIN)) drain_wake();  // requests wait in the queue
                    if (n > 0 && (p[0].revents & (POLLOUT | POLLERR | POLLHUP))) {
                        writable = true;
                        break;
                    }
                    if (Clock::now() >= deadline) break;
                }
                if (!writable) {
                    why = "connection timed out after " + std::to_string(connect_timeout_ms) + " ms";
                    continue;
                }
                int error = 0;
                socklen_t length = sizeof error;
                if (::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &error, &length) != 0) error = errno;
                if (error != 0) {
                    why = std::strerror(error);
                    continue;
                }
            }
            const int one = 1;
            ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            return fd;
        }
        return Fd();
    }

    // Runs one connection until it ends; returns why it ended ("" when stopped). A drop is reported
    // (onConnection(Dropped), with the back-off that follows) before the open requests fail, so a
    // listener that stops the link on a request's error has heard why. A daemon that spoke properly
    // starts the back-off over.
    std::string serve(DaemonListener& listener, Fd& sock, int& backoff_ms, int first_backoff_ms) {
        bool heard = false;
        LinkSession session(listener);
        std::vector<uint8_t> out = LinkSession::greeting(token);
        size_t sent = 0;
        std::vector<uint8_t> in(64 * 1024);
        std::string why;
        while (!stopping.load() && why.empty()) {
            pollfd p[2] = {{sock.get(), short(POLLIN | (sent < out.size() ? POLLOUT : 0)), 0},
                           {wake_read.get(), POLLIN, 0}};
            const int n = ::poll(p, 2, 1000);
            if (n < 0) {
                if (errno == EINTR) continue;
                why = std::string("poll: ") + std::strerror(errno);
                break;
            }
            if (p[1].revents & POLLIN) drain_wake();
            // every round, not only when woken: requests queued while connecting were woken for already
            for (Command& c : take_commands()) {
                const std::vector<uint8_t> packet = c.generate ? session.open(c.request) : session.cancel(c.id);
                out.insert(out.end(), packet.begin(), packet.end());
            }
            if (p[0].revents & (POLLIN | POLLHUP | POLLERR)) {
                for (int reads = 0; reads < 64 && why.empty(); ++reads) {  // then let writes and requests in
                    const ssize_t got = ::recv(sock.get(), in.data(), in.size(), 0);
                    if (got == 0) {
                        why = session.partial_bytes() == 0
                                  ? "the daemon closed the connection"
                                  : "the daemon closed the connection inside a packet (truncated after " +
                                        std::to_string(session.partial_bytes()) + " bytes)";
                    } else if (got < 0) {
                        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) break;
                        why = std::string("receive: ") + std::strerror(errno);
                    } else if (!session.feed(in.data(), size_t(got))) {
                        why = session.why();
                    }
                }
                heard = heard || session.heard();
            }
            if (why.empty() && sent < out.size()) {
#ifdef MSG_NOSIGNAL
                const int flags = MSG_NOSIGNAL;
#else
                const int flags = 0;
#endif
                const ssize_t put = ::send(sock.get(), out.data() + sent, out.size() - sent, flags);
                if (put > 0) {
                    sent += size_t(put);
                    if (sent == out.size()) {
                        out.clear();
                        sent = 0;
                    }
                } else if (put < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                    why = std::string("send: ") + std::strerror(errno);
                }
            }
        }
        sock.reset();
        if (heard) backoff_ms = first_backoff_ms;
        if (!why.empty())
            listener.onConnection(ConnectionState::Dropped,
                                  why + "; retrying in " + std::to_string(backoff_ms) + " ms");
        session.close_all("connection_lost",
                          "the connection to the daemon at " + where() + " ended: " + (why.empty() ? "stopped" : why));
        return why;
    }

    void run(DaemonListener& listener) {
        constexpr int kFirstBackoffMs = 500, kLastBackoffMs = 5000;
        int backoff_ms = kFirstBackoffMs;
        while (!stopping.load()) {
            listener.onConnection(ConnectionState::Connecting, where());
            std::string why;
            Fd sock = connect_socket(why);
            if (stopping.load()) break;
            if (!sock.valid()) {
                listener.onConnection(ConnectionState::Unreachable,
                                      why + "; retrying in " + std::to_string(backoff_ms) + " ms");
                wait_disconnected(listener, Clock::now() + std::chrono::milliseconds(backoff_ms), why);
                backoff_ms = std::min(backoff_ms * 2, kLastBackoffMs);
                continue;
            }
            listener.onConnection(ConnectionState::Connected, where());
            why = serve(listener, sock, backoff_ms, kFirstBackoffMs);
            if (stopping.load()) break;
            wait_disconnected(listener, Clock::now() + std::chrono::milliseconds(backoff_ms), why);
            backoff_ms = std::min(backoff_ms * 2, kLastBackoffMs);
        }
        listener.onConnection(ConnectionState::Stopped, "");
    }
};

DaemonLink::DaemonLink(DaemonListener& listener) : listener_(listener) {}

DaemonLink::~DaemonLink() { stop(); }

bool DaemonLink::start(const std::string& host, uint16_t port, const std::string& token) {
    stop();
    auto impl = std::make_unique<Impl>();
    impl->host = host;
    impl->port = port;
    impl->token = token;
    impl->connect_timeout_ms = connect_timeout_ms_;
    int fds[2];
    if (::pipe(fds) != 0) return false;
    impl->wake_read = Fd(fds[0]);
    impl->wake_write = Fd(fds[1]);
    if (!set_nonblocking(fds[0]) || !set_nonblocking(fds[1])) return false;
    Impl* raw = impl.get();
    DaemonListener* listener = &listener_;
#if defined(__cpp_exceptions)
    try {
        impl->thread = std::thread([raw, listener] { raw->run(*listener); });
    } catch (const std::system_error&) {
        return false;
    }
#else
    impl->thread = std::thread([raw, listener] { raw->run(*listener); });
#endif
    impl_ = std::move(impl);
    running_.store(true);
    return true;
}

void DaemonLink::stop() {
    if (!impl_) return;
    impl_->stopping.store(true);
    running_.store(false);
    impl_->wake();
    if (impl_->thread.joinable()) {
        if (impl_->thread.get_id() == std::this_thread::get_id()) return;  // from a listener: joined later
        impl_->thread.join();
    }
    impl_.reset();
}

SendResult DaemonLink::send_generate(const Request& request) {
    if (!validate_request(request).empty()) return SendResult::Invalid;
    if (!impl_ || !running_.load()) return SendResult::NotStarted;
    Command c;
    c.request = request;
    impl_->push(std::move(c));
    return SendResult::Queued;
}

SendResult DaemonLink::cancel(const std::string& id) {
    if (!impl_ || !running_.load()) return SendResult::NotStarted;
    Command c;
    c.generate = false;
    c.id = id;
    impl_->push(std::move(c));
    return SendResult::Queued;
}

#else  // _WIN32: the link is not built for Windows yet (winsock and an event in place of the self-pipe)

struct DaemonLink::Impl {};
DaemonLink::DaemonLink(DaemonListener& listener) : listener_(listener) {}
DaemonLink::~DaemonLink() = default;
bool DaemonLink::start(const std::string&, uint16_t, const std::string&) {
    listener_.onConnection(ConnectionState::Stopped, "the daemon link is not built for Windows yet");
    return false;
}
void DaemonLink::stop() {}
SendResult DaemonLink::send_generate(const Request& request) {
    return validate_request(request).empty() ? SendResult::NotStarted : SendResult::Invalid;
}
SendResult DaemonLink::cancel(const std::string&) { return SendResult::NotStarted; }

#endif

}  // namespace stemd
