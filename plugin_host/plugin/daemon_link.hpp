// The stemd plugin's network side: one TCP connection to `stemd serve` on its own thread.
//
// DaemonLink speaks the daemon's protocol (docs/protocol.md): OSC 1.0 over TCP, length-prefixed
// packets capped at 64 MiB + 64 KiB. On connect it sends `/stemd/hello <token>` (when a token is set)
// and `/stemd/models`; it reconnects with back-off (0.5 s doubling to 5 s) whenever the daemon is
// absent, goes away, or sends anything malformed (the connection is dropped, never the host).
//
// Threads: start(), stop(), send_generate() and cancel() are called from the plugin's non-audio
// threads (they take a mutex: never call them from the audio thread). Every Listener method is
// called on the link's own network thread, one at a time; pointers and references passed to it are
// valid only during the call.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace stemd {

// One `/stemd/generate` request (the keys the plugin sends; docs/protocol.md has the ranges).
struct Request {
    std::string id;           // 1-128 of letters, digits, _ . : -  (unique among the link's open requests)
    std::string prompt;       // <= 2000 characters
    std::string model;        // "" = the daemon's default (the key is then not sent)
    int32_t bars = 4;         // 1..256
    int32_t variations = 1;   // 1..16
    std::string bpm = "120";  // exact: "num/den" or a decimal such as "97" or "137.5" (sent as an OSC string)
    std::string meter = "4/4";
    int32_t start_bar = 0;    // 0-based: 0 is the DAW's bar 1
    int32_t sample_rate = 48000;
    int32_t channels = 2;     // the plugin always asks for stereo
    int64_t seed = -1;        // 0..2^63-1; negative: not sent (the daemon picks one and writes it to the sidecar)
    // the plugin window's keys; each is sent only when set (a family lacking one refuses it: unsupported_key)
    std::string key;          // musical key, e.g. "A minor" (<= 64 characters); "" = not sent
    int32_t steps = 0;        // 1..200 (diffusion families); 0 = not sent
    float guidance = -1.0f;   // 0..20; < 0 = not sent
    float strength = -1.0f;   // 0..1 (Stable Audio 3, with a continuation); < 0 = not sent
    float temperature = 0.0f; // 0.01..5 (MusicGen); 0 = not sent
    // audio to continue from (extend): interleaved float32 frames at continuation_rate, <= 64 MiB; shared so
    // the network thread encodes it without another copy. null = not sent
    std::shared_ptr<const std::vector<float>> continuation;
    int32_t continuation_rate = 48000;
    int32_t continuation_channels = 2;
    // a guide the take follows (docs/guides.md): a Standard MIDI File (<= 1 MiB; null = not sent), or chord
    // symbols per bar (<= 4096 bytes; "" = not sent); never both
    std::shared_ptr<const std::vector<uint8_t>> guide;
    std::string chords;
    float guide_strength = -1.0f;  // 0..1 (ACE-Step); < 0 = not sent
};

// One row of `/stemd/models/reply`: the nine values per model, in the daemon's order.
struct ModelRow {
    std::string name;
    std::string family;
    bool loaded = false;
    std::string device;
    std::string dtype;
    int64_t bytes = 0;
    std::string license;
    bool commercial = false;
    std::string weights_sha256;
};

enum class ConnectionState {
    Stopped,      // stop() was called, or start() was never called
    Connecting,   // a connection attempt is under way
    Connected,    // TCP is up and hello/models were sent
    Unreachable,  // the attempt failed (refused, timed out, bad address); retrying after back-off
    Dropped,      // a live connection ended: peer closed, socket error, or a malformed/oversized packet
};

const char* connection_state_name(ConnectionState state);  // "stopped", "connecting", ...

// Implemented by the plugin. Called on the network thread only. `id` is the request id; onError's id
// is "" when the daemon could not tie the error to a request (e.g. `unauthorized`).
class DaemonListener {
public:
    virtual ~DaemonListener() = default;
    // `message` says why (e.g. "connection refused", "packet of 2147483647 bytes over the limit").
    virtual void onConnection(ConnectionState state, const std::string& message) = 0;
    virtual void onModels(const std::vector<ModelRow>& rows) = 0;
    virtual void onAccepted(const std::string& id) = 0;
    virtual void onQueued(const std::string& id, int32_t ahead) = 0;
    virtual void onProgress(const std::string& id, float fraction, int32_t bars_done) = 0;
    // One bar of one variation: `frames` x `channels` float32 interleaved (native endianness), valid only
    // during the call. `start_sample` is the bar's first sample on the DAW timeline (bar 1 = sample 0).
    virtual void onChunk(const std::string& id, int32_t variation, int32_t bar_index, int64_t start_sample,
                         int32_t sample_rate, int32_t channels, const float* audio, size_t frames) = 0;
    // The daemon's JSON sidecar for one variation (comes before that variation's onTake).
    virtual void onSidecar(const std::string& id, int32_t variation, const std::string& json) = 0;
    // The finished take's path on the daemon's host.
    virtual void onTake(const std::string& id, int32_t variation, const std::string& path) = 0;
    virtual void onDone(const std::string& id) = 0;
    virtual void onCancelled(const std::string& id) = 0;
    // The daemon's error codes (docs/protocol.md), plus the link's own for requests it could not
    // deliver or whose connection went away: "not_connected", "connection_lost", "bad_request",
    // "duplicate_id". Each request ends with exactly one of onDone, onCancelled or onError; a daemon error
    // naming a request that has already ended is not passed on.
    virtual void onError(const std::string& id, const std::string& code, const std::string& message) = 0;
};

enum class SendResult {
    Queued,      // handed to the network thread (its outcome arrives through the listener)
    NotStarted,  // start() has not been called, or stop() has
    Invalid,     // the request breaks the protocol's ranges (see validate_request)
};

// "" when `request` is within the protocol's ranges, else what is wrong, e.g. "bars must be 1..256, got 0".
std::string validate_request(const Request& request);

// The `/stemd/generate` packet for `request` (unframed OSC); empty when validate_request refuses it.
std::vector<uint8_t> encode_generate(const Request& request);

// The protocol of one connection without its socket: bytes in, listener events out. Every packet is
// framed with a cap, decoded with bounds, and each event checked against the request it belongs to
// (a chunk's sizes, rate, channels, variation, bar order). DaemonLink runs one per connection; the
// fuzzer and tests feed it bytes directly.
class LinkSession {
public:
    // `max_packet`: the largest packet accepted (the daemon's own limit, 64 MiB + 64 KiB; a fuzzer may
    // ask for less to keep its runs fast).
    explicit LinkSession(DaemonListener& listener, size_t max_packet = 64u * 1024u * 1024u + 64u * 1024u);
    ~LinkSession();
    LinkSession(const LinkSession&) = delete;
    LinkSession& operator=(const LinkSession&) = delete;

    // Bytes read from the socket. false: the connection must be dropped (why() says why, in one line);
    // every later call returns false too.
    bool feed(const uint8_t* data, size_t size);
    const std::string& why() const;
    bool heard() const;  // a well-formed packet has arrived on this connection
    size_t partial_bytes() const;  // bytes of a packet that has not arrived whole yet
    // Memory the session keeps between feeds for packets and audio: it follows the bytes that came (a
    // header announcing 64 MiB costs nothing until they arrive) and is back under 4 MiB after any packet.
    size_t held_bytes() const;

    // The framed packets sent on connect: `/stemd/hello <token>` (when token is not "") and `/stemd/models`.
    static std::vector<uint8_t> greeting(const std::string& token);
    // The framed `/stemd/generate` for `request`, which is now open (its events are expected). Empty, with
    // onError(id, "bad_request" or "duplicate_id", ...) called, when it is invalid or its id is open.
    std::vector<uint8_t> open(const Request& request);
    // The framed `/stemd/cancel <id>`; empty when `id` is not open here.
    std::vector<uint8_t> cancel(const std::string& id);
    // The connection is gone: each open request gets onError(id, code, message) and is forgotten.
    void close_all(const std::string& code, const std::string& message);
    size_t open_requests() const;

private:
    struct State;
    std::unique_ptr<State> state_;
};

class DaemonLink {
public:
    explicit DaemonLink(DaemonListener& listener);
    ~DaemonLink();  // stops and joins
    DaemonLink(const DaemonLink&) = delete;
    DaemonLink& operator=(const DaemonLink&) = delete;

    // Starts the network thread (stopping a running one first). `token` "" sends no hello.
    // false (and nothing started) when the thread cannot be created or the self-pipe cannot be made.
    bool start(const std::string& host, uint16_t port, const std::string& token);
    // Wakes the thread and joins it (within one poll round, < 100 ms, whatever the resolver does: a host
    // name is looked up on a helper thread that stop() does not wait for); onConnection(Stopped) is the
    // last event. Requests still open get no further events. Safe to call twice.
    void stop();

    SendResult send_generate(const Request& request);
    SendResult cancel(const std::string& id);

    bool running() const { return running_.load(); }

    // Tunables for tests and the probe (set before start()).
    void set_connect_timeout_ms(int ms) { connect_timeout_ms_ = ms; }

private:
    struct Impl;
    DaemonListener& listener_;
    std::unique_ptr<Impl> impl_;
    std::atomic<bool> running_{false};
    int connect_timeout_ms_ = 3000;
};

}  // namespace stemd
