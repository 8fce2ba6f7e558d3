// Unit test of the plugin's network side without a network: the OSC codec, the framing reader and the
// link's event checks (LinkSession). Built with ASan + UBSan by `make -C plugin_host/plugin link_test`
// (run by tests/test_plugin_link.py); prints one line per failed check and exits 1 if any failed.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "daemon_link.hpp"
#include "framing.hpp"
#include "link_fixtures.hpp"
#include "osc.hpp"

using namespace stemd;

namespace {

int g_failures = 0;
int g_checks = 0;

#define CHECK(cond)                                                                      \
    do {                                                                                 \
        ++g_checks;                                                                      \
        if (!(cond)) {                                                                   \
            ++g_failures;                                                                \
            std::printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);                  \
        }                                                                                \
    } while (0)

std::vector<uint8_t> bytes(const char* text, size_t n) {
    return std::vector<uint8_t>(reinterpret_cast<const uint8_t*>(text), reinterpret_cast<const uint8_t*>(text) + n);
}

osc::Error decode(const std::vector<uint8_t>& packet) {
    osc::Message m;
    return osc::decode_message(packet.data(), packet.size(), m);
}

struct Collect final : osc::MessageVisitor {
    std::vector<std::string> addresses;
    void message(const osc::Message& m) override { addresses.emplace_back(m.address); }
};

std::vector<uint8_t> bundle(const std::vector<std::vector<uint8_t>>& elements) {
    std::vector<uint8_t> out = bytes("#bundle\0", 8);
    osc::append_be64(out, 1);
    for (const auto& e : elements) framing::append_framed(out, e);
    return out;
}

void test_round_trip() {
    const uint8_t blob[5] = {1, 2, 3, 4, 5};
    const std::vector<uint8_t> packet = osc::Builder("/stemd/x")
                                            .s("hé")
                                            .i(-7)
                                            .h(int64_t(1) << 40)
                                            .f(0.5f)
                                            .d(-2.25)
                                            .b(blob, 5)
                                            .boolean(true)
                                            .boolean(false)
                                            .finish();
    CHECK(packet.size() % 4 == 0);
    osc::Message m;
    CHECK(osc::decode_message(packet.data(), packet.size(), m) == osc::Error::None);
    CHECK(m.address == "/stemd/x");
    CHECK(m.tags == "sihfdbTF");
    osc::ArgReader r(m);
    osc::Arg a;
    CHECK(r.next(a) && a.tag == 's' && a.s == "hé");
    CHECK(r.next(a) && a.tag == 'i' && a.i == -7);
    CHECK(r.next(a) && a.tag == 'h' && a.i == (int64_t(1) << 40));
    CHECK(r.next(a) && a.tag == 'f' && a.f == 0.5);
    CHECK(r.next(a) && a.tag == 'd' && a.f == -2.25);
    CHECK(r.next(a) && a.tag == 'b' && a.size == 5 && std::memcmp(a.data, blob, 5) == 0);
    CHECK(r.next(a) && a.tag == 'T');
    CHECK(r.next(a) && a.tag == 'F');
    CHECK(!r.next(a) && r.error() == osc::Error::None);
    // a message with no type tag string at all (OSC 1.0 allows it)
    CHECK(decode(bytes("/abc\0\0\0\0", 8)) == osc::Error::None);
}

void test_malformed_messages() {
    CHECK(decode({}) == osc::Error::Empty);
    CHECK(decode(bytes("/ab\0\0", 5)) == osc::Error::Unaligned);
    CHECK(decode(bytes("abc\0", 4)) == osc::Error::NotOsc);
    CHECK(decode(bytes("/abc", 4)) == osc::Error::Unterminated);
    CHECK(decode(bytes("/a\0\0,i\0\0\0\0\0", 11)) == osc::Error::Unaligned);
    CHECK(decode(bytes("/a\0\0,i\0\0\0\0", 10)) == osc::Error::Unaligned);
    CHECK(decode(bytes("/a\0\0,i\0\0", 8)) == osc::Error::Truncated);        // an int with no bytes
    CHECK(decode(bytes("/a\0\0xi\0\0", 8)) == osc::Error::BadTypeTags);
    CHECK(decode(bytes("/a\0\0,X\0\0", 8)) == osc::Error::UnsupportedTag);
    CHECK(decode(bytes("/a\0\0,[]\0", 8)) == osc::Error::UnsupportedTag);
    CHECK(decode(bytes("/a\0\0,\0\0\0\0\0\0\0", 12)) == osc::Error::TrailingBytes);
    CHECK(decode(bytes("/a\0\0,s\0\0abcd", 12)) == osc::Error::Unterminated);  // string runs off the end
    CHECK(decode(bytes("/a\0\0,s\0\0\xff\0\0\0", 12)) == osc::Error::BadUtf8);
    CHECK(decode(bytes("/a\0\0,b\0\0\0\0\0\x09zzzz", 16)) == osc::Error::BadBlobSize);  // 9 > 4 left
    CHECK(decode(bytes("/a\0\0,b\0\0\xff\xff\xff\xfczzzz", 16)) == osc::Error::BadBlobSize);  // -4
    CHECK(decode(bytes("/a\0\0,b\0\0\0\0\0\x03zzz", 15)) == osc::Error::Unaligned);
    // padding that is not NUL (OSC 1.0 pads with NUL only; the daemon's decoder refuses it too): after the
    // address, the type tags, a string argument and a blob; and through ArgReader as well
    CHECK(decode(bytes("/a\0x,\0\0\0", 8)) == osc::Error::BadPadding);
    CHECK(decode(bytes("/a\0\0,i\0 \0\0\0\1", 12)) == osc::Error::BadPadding);
    CHECK(decode(bytes("/a\0\0,s\0\0ab\0x", 12)) == osc::Error::BadPadding);
    CHECK(decode(bytes("/a\0\0,b\0\0\0\0\0\x03zzz\x01", 16)) == osc::Error::BadPadding);
    CHECK(decode(bytes("/a\0\0,s\0\0ab\0\0", 12)) == osc::Error::None);  // the same, NUL-padded
    CHECK(decode(bytes("/a\0\0,b\0\0\0\0\0\x03zzz\0", 16)) == osc::Error::None);
    {
        const std::vector<uint8_t> p = bytes("/a\0\0,ib\0\0\0\0\x07\0\0\0\x01z\xff\xff\xff", 20);
        osc::Message m{"/a", "ib", p.data() + 8, 12};  // a Message built by hand skips decode_message
        osc::ArgReader r(m);
        osc::Arg a;
        CHECK(r.next(a) && a.i == 7);
        CHECK(!r.next(a) && r.error() == osc::Error::BadPadding);
    }
    // the blob's 3 bytes fit but its padding does not: only possible with trailing bytes cut off
    {
        std::vector<uint8_t> p = bytes("/a\0\0,bi\0\0\0\0\x03zzz\0", 16);
        CHECK(decode(p) == osc::Error::Truncated);  // the int after the blob is missing
    }
    // more type tags than the daemon allows in one packet
    {
        std::string tags = "," + std::string(osc::kMaxElements + 1, 'T');
        std::vector<uint8_t> p = osc::Builder("/a").finish();
        p.resize(4);  // "/a\0\0"
        p.insert(p.end(), tags.begin(), tags.end());
        p.resize((p.size() + 4) & ~size_t(3), 0);
        CHECK(decode(p) == osc::Error::TooManyElements);
    }
    CHECK(osc::Builder("x").finish().empty());
    CHECK(osc::Builder("x").error() == osc::Error::BadAddress);
    CHECK(osc::Builder("/a").s(std::string("a\0b", 3)).error() == osc::Error::NulInString);
}

void test_bundles() {
    const auto one = osc::Builder("/one").i(1).finish();
    const auto two = osc::Builder("/two").finish();
    {
        Collect c;
        const auto b = bundle({one, bundle({two})});
        CHECK(osc::for_each_message(b.data(), b.size(), c) == osc::Error::None);
        CHECK((c.addresses == std::vector<std::string>{"/one", "/two"}));
    }
    {  // a bad element anywhere: nothing is visited
        Collect c;
        auto b = bundle({one, bytes("/bad", 4)});
        CHECK(osc::for_each_message(b.data(), b.size(), c) == osc::Error::Unterminated);
        CHECK(c.addresses.empty());
    }
    {  // an element claiming more than the bundle holds
        Collect c;
        auto b = bundle({one});
        b[19] = 0x7f;
        CHECK(osc::for_each_message(b.data(), b.size(), c) == osc::Error::BadBundleElement);
    }
    {  // nested deeper than the daemon allows
        std::vector<uint8_t> b = one;
        for (int k = 0; k < osc::kMaxBundleDepth + 1; ++k) b = bundle({b});
        Collect c;
        CHECK(osc::for_each_message(b.data(), b.size(), c) == osc::Error::BundleTooDeep);
    }
    {
        Collect c;
        auto b = bytes("#bundle\0", 8);
        CHECK(osc::for_each_message(b.data(), b.size(), c) == osc::Error::Truncated);
    }
}

void test_framing() {
    std::vector<uint8_t> stream;
    const auto a = osc::Builder("/a").s("x").finish();
    const auto b = osc::Builder("/bb").i(3).finish();
    framing::append_framed(stream, a);
    framing::append_framed(stream, b);
    framing::append_framed(stream, a);
    // one byte at a time: three packets, each equal to what was framed
    framing::Reader reader;
    std::vector<std::vector<uint8_t>> got;
    for (uint8_t byte : stream) {
        const uint8_t* p = &byte;
        size_t n = 1;
        while (true) {
            const auto status = reader.consume(p, n);
            if (status != framing::Reader::Status::Packet) {
                CHECK(status == framing::Reader::Status::NeedMore);
                break;
            }
            got.emplace_back(reader.packet(), reader.packet() + reader.packet_size());
        }
    }
    CHECK((got == std::vector<std::vector<uint8_t>>{a, b, a}));

    auto header = [](uint32_t size) {
        std::vector<uint8_t> h;
        osc::append_be32(h, size);
        return h;
    };
    {  // negative: refused at the header, nothing buffered
        framing::Reader r;
        auto h = header(0x80000000u);
        const uint8_t* p = h.data();
        size_t n = h.size();
        CHECK(r.consume(p, n) == framing::Reader::Status::Failed);
        CHECK(r.error() == framing::Error::NegativeSize && r.packet_size() == 0);
        CHECK(r.consume(p, n) == framing::Reader::Status::Failed);  // and it stays failed
    }
    {  // one byte over the cap: refused before its buffer exists
        framing::Reader r;
        auto h = header(uint32_t(framing::kMaxPacket + 1));
        const uint8_t* p = h.data();
        size_t n = h.size();
        CHECK(r.consume(p, n) == framing::Reader::Status::Failed);
        CHECK(r.error() == framing::Error::TooLarge && r.bad_size() == int64_t(framing::kMaxPacket + 1));
        CHECK(r.packet_size() == 0);
    }
    {  // exactly the cap: accepted, waiting for its bytes
        framing::Reader r;
        auto h = header(uint32_t(framing::kMaxPacket));
        const uint8_t* p = h.data();
        size_t n = h.size();
        CHECK(r.consume(p, n) == framing::Reader::Status::NeedMore);
        CHECK(r.error() == framing::Error::None);
    }
    {  // the cap announced and 10 bytes sent: the buffer holds what came, not what the header claims
        framing::Reader r;
        auto h = header(uint32_t(framing::kMaxPacket));
        h.insert(h.end(), 10, uint8_t('x'));
        const uint8_t* p = h.data();
        size_t n = h.size();
        CHECK(r.consume(p, n) == framing::Reader::Status::NeedMore && n == 0);
        CHECK(r.buffered() == 10);
        CHECK(r.capacity() <= 4096);
    }
    {  // a 3 MiB packet in 64 KiB pieces: whole, its buffer grown to no more than it, and let go after it
        const std::vector<uint8_t> blob(3u << 20, 7);
        std::vector<uint8_t> stream;
        framing::append_framed(stream, osc::Builder("/big").b(blob.data(), blob.size()).finish());
        framing::append_framed(stream, a);
        framing::Reader r;
        size_t packets = 0, largest = 0, at = 0;
        while (at < stream.size()) {
            const uint8_t* p = stream.data() + at;
            size_t n = std::min(stream.size() - at, size_t(64) << 10);
            at += n;
            while (r.consume(p, n) == framing::Reader::Status::Packet) {
                ++packets;
                largest = std::max(largest, r.packet_size());
                CHECK(r.capacity() == r.packet_size() || r.packet_size() == a.size());
            }
        }
        CHECK(packets == 2 && largest == blob.size() + 16);
        CHECK(r.capacity() <= (size_t(1) << 20));  // the 3 MiB buffer went with its packet
    }
}

struct Events final : DaemonListener {
    std::vector<std::string> log;
    std::vector<ModelRow> rows;
    size_t frames = 0;
    float first = 0.0f;
    void onConnection(ConnectionState, const std::string&) override {}
    void onModels(const std::vector<ModelRow>& r) override {
        rows = r;
        log.push_back("models");
    }
    void onAccepted(const std::string& id) override { log.push_back("accepted " + id); }
    void onQueued(const std::string& id, int32_t ahead) override {
        log.push_back("queued " + id + " " + std::to_string(ahead));
    }
    void onProgress(const std::string& id, float, int32_t bars) override {
        log.push_back("progress " + id + " " + std::to_string(bars));
    }
    void onChunk(const std::string& id, int32_t v, int32_t bar, int64_t start, int32_t, int32_t, const float* audio,
                 size_t n) override {
        frames = n;
        first = audio[0];
        log.push_back("chunk " + id + " " + std::to_string(v) + " " + std::to_string(bar) + " " + std::to_string(start));
    }
    void onSidecar(const std::string& id, int32_t v, const std::string& json) override {
        log.push_back("sidecar " + id + " " + std::to_string(v) + " " + json);
    }
    void onTake(const std::string& id, int32_t v, const std::string& path) override {
        log.push_back("take " + id + " " + std::to_string(v) + " " + path);
    }
    void onDone(const std::string& id) override { log.push_back("done " + id); }
    void onCancelled(const std::string& id) override { log.push_back("cancelled " + id); }
    void onError(const std::string& id, const std::string& code, const std::string&) override {
        log.push_back("error " + id + " " + code);
    }
};

Request request() { return two_bar_request("t1", "97", "3/4", 48000, 5); }

std::vector<uint8_t> framed(const std::vector<uint8_t>& packet) {
    std::vector<uint8_t> out;
    framing::append_framed(out, packet);
    return out;
}

// A /stemd/chunk of `frames` stereo frames (or `blob_bytes` when given), first sample 0.25.
std::vector<uint8_t> chunk(const char* id, int v, int bar, int64_t start, int rate, int channels, size_t frames,
                           long blob_bytes = -1) {
    std::vector<uint8_t> audio(blob_bytes >= 0 ? size_t(blob_bytes) : frames * size_t(channels) * 4, 0);
    const float quarter = 0.25f;
    if (audio.size() >= 4) std::memcpy(audio.data(), &quarter, 4);  // little-endian on the hosts we build for
    return framed(osc::Builder("/stemd/chunk").s(id).i(v).i(bar).h(start).i(rate).i(channels).b(audio.data(), audio.size()).finish());
}

// feeds `packets` to a session with request() open; returns whether the connection survived
bool feed(Events& e, const std::vector<std::vector<uint8_t>>& packets, std::string* why = nullptr) {
    LinkSession s(e);
    CHECK(!s.open(request()).empty());
    bool alive = true;
    for (const auto& p : packets) alive = alive && s.feed(p.data(), p.size());
    if (why) *why = s.why();
    CHECK(alive == s.why().empty());
    return alive;
}

void test_session_good_traffic() {
    Events e;
    const auto models = framed(osc::Builder("/stemd/models/reply").i(1).s("click").s("click").i(1).s("cpu").s("float32")
                                   .h(0).s("MIT (stemd)").i(1).s("").finish());
    std::vector<std::vector<uint8_t>> traffic = {
        models,
        framed(osc::Builder("/stemd/accepted").s("t1").finish()),
        framed(osc::Builder("/stemd/queued").s("t1").i(1).finish()),
        chunk("t1", 0, 0, 178144, 48000, 2, 89072),
        chunk("t1", 0, 1, 178144 + 89072, 48000, 2, 89073),
        framed(osc::Builder("/stemd/progress").s("t1").f(1.0f).i(2).finish()),
        framed(osc::Builder("/stemd/sidecar").s("t1").i(1).s("{\"seed\": 5}").finish()),
        framed(osc::Builder("/stemd/take").s("t1").i(1).s("/takes/a.wav").finish()),
        framed(osc::Builder("/stemd/pong").finish()),  // ignored
        framed(osc::Builder("/stemd/newer/thing").i(1).finish()),  // ignored
        framed(osc::Builder("/stemd/done").s("t1").finish()),
    };
    // all at once, in one buffer
    std::vector<uint8_t> stream;
    for (const auto& p : traffic) stream.insert(stream.end(), p.begin(), p.end());
    CHECK(feed(e, {stream}));
    const std::vector<std::string> expected = {
        "models", "accepted t1", "queued t1 1", "chunk t1 0 0 178144", "chunk t1 0 1 267216", "progress t1 2",
        "sidecar t1 1 {\"seed\": 5}", "take t1 1 /takes/a.wav", "done t1"};
    CHECK(e.log == expected);
    CHECK(e.frames == 89073 && e.first == 0.25f);
    CHECK(e.rows.size() == 1 && e.rows[0].name == "click" && e.rows[0].loaded && e.rows[0].commercial &&
          e.rows[0].license == "MIT (stemd)");
    // an error for an id this link does not have open is passed on, not a reason to drop
    Events e2;
    CHECK(feed(e2, {framed(osc::Builder("/stemd/error").s("").s("unauthorized").s("no").finish())}));
    CHECK(e2.log == std::vector<std::string>{"error  unauthorized"});
    // an error for a request that has ended (a cancel that crossed its done) is not passed on
    Events e3;
    CHECK(feed(e3, {framed(osc::Builder("/stemd/done").s("t1").finish()),
                    framed(osc::Builder("/stemd/error").s("t1").s("unknown_request").s("no").finish())}));
    CHECK(e3.log == std::vector<std::string>{"done t1"});
}

void test_session_drops_bad_events() {
    struct Case {
        const char* name;
        std::vector<std::vector<uint8_t>> packets;
    };
    const auto ok0 = chunk("t1", 0, 0, 1000, 48000, 2, 100);
    const std::vector<Case> cases = {
        {"blob size not frames*channels*4", {chunk("t1", 0, 0, 1000, 48000, 2, 0, 801)}},
        {"empty blob", {chunk("t1", 0, 0, 1000, 48000, 2, 0, 0)}},
        {"three channels", {chunk("t1", 0, 0, 1000, 48000, 3, 100)}},
        {"sample rate 7", {chunk("t1", 0, 0, 1000, 7, 2, 100)}},
        {"rate not the request's", {chunk("t1", 0, 0, 1000, 44100, 2, 100)}},
        {"mono for a stereo request", {chunk("t1", 0, 0, 1000, 48000, 1, 100)}},
        {"negative bar", {chunk("t1", 0, -1, 1000, 48000, 2, 100)}},
        {"negative start", {chunk("t1", 0, 0, -5, 48000, 2, 100)}},
        {"bar past the take", {chunk("t1", 0, 2, 1000, 48000, 2, 100)}},
        {"variation past the request's", {chunk("t1", 2, 0, 1000, 48000, 2, 100)}},
        {"unknown id", {chunk("zz", 0, 0, 1000, 48000, 2, 100)}},
        {"bar repeated", {ok0, ok0}},
        {"gap in samples", {ok0, chunk("t1", 0, 1, 1101, 48000, 2, 100)}},
        {"chunk part never asked for", {framed(osc::Builder("/stemd/chunk/part").s("t1").finish())}},
        {"chunk with a string for bar",
         {framed(osc::Builder("/stemd/chunk").s("t1").i(0).s("0").h(0).i(48000).i(2).b(nullptr, 0).finish())}},
        {"too few arguments", {framed(osc::Builder("/stemd/accepted").finish())}},
        {"progress over 1", {framed(osc::Builder("/stemd/progress").s("t1").f(1.5f).i(1).finish())}},
        {"queued negative", {framed(osc::Builder("/stemd/queued").s("t1").i(-1).finish())}},
        {"sidecar over 64 KiB", {framed(osc::Builder("/stemd/sidecar").s("t1").i(0).s(std::string(65537, 'x')).finish())}},
        {"take after done", {framed(osc::Builder("/stemd/done").s("t1").finish()),
                             framed(osc::Builder("/stemd/take").s("t1").i(0).s("/a.wav").finish())}},
        {"models count lies", {framed(osc::Builder("/stemd/models/reply").i(2).s("a").s("b").i(1).s("").s("")
                                          .i(0).s("").i(0).s("").finish())}},
        {"models row of wrong types", {framed(osc::Builder("/stemd/models/reply").i(1).s("a").s("b").s("1").s("")
                                                  .s("").i(0).s("").i(0).s("").finish())}},
        {"bye", {framed(osc::Builder("/stemd/bye").s("stopping").finish())}},
        {"malformed packet", {framed(bytes("/a\0\0,b\0\0\0\0\0\x09zzzz", 16))}},
        {"padding not NUL", {framed(bytes("/stemd/done\0,s\0\0t1\0!", 20))}},
        {"oversized header", {bytes("\x7f\xff\xff\xff", 4)}},
        {"negative header", {bytes("\xff\xff\xff\xfe", 4)}},
    };
    for (const auto& c : cases) {
        Events e;
        std::string why;
        const bool alive = feed(e, c.packets, &why);
        if (alive) std::printf("FAIL: '%s' did not drop the connection\n", c.name);
        CHECK(!alive);
    }
    // a good chunk then the next bar where the last one ended: kept
    Events e;
    CHECK(feed(e, {ok0, chunk("t1", 0, 1, 1100, 48000, 2, 100), chunk("t1", 1, 0, 1000, 48000, 2, 100)}));
}

void test_session_memory() {
    {  // a header announcing the cap, 10 bytes, then nothing: the session holds what came, not 64 MiB
        Events e;
        LinkSession s(e);
        s.open(request());
        std::vector<uint8_t> h;
        osc::append_be32(h, uint32_t(framing::kMaxPacket));
        h.insert(h.end(), 10, uint8_t('x'));
        CHECK(s.feed(h.data(), h.size()));
        CHECK(s.partial_bytes() == 10 && s.held_bytes() <= 4096);
    }
    {  // a 6.4 MB one-bar chunk in 64 KiB pieces: delivered whole, then its packet and audio buffers let go
        Events e;
        LinkSession s(e);
        s.open(request());
        const auto big = chunk("t1", 0, 0, 0, 48000, 2, 800000);
        bool alive = true;
        for (size_t at = 0; at < big.size() && alive; at += size_t(64) << 10)
            alive = s.feed(big.data() + at, std::min(big.size() - at, size_t(64) << 10));
        CHECK(alive && e.frames == 800000 && e.first == 0.25f);
        CHECK(s.held_bytes() <= (size_t(1) << 20));
    }
}

void test_session_requests() {
    Events e;
    LinkSession s(e);
    const auto packet = s.open(request());
    CHECK(!packet.empty());
    CHECK(s.open(request()).empty());  // the same id again
    CHECK(e.log == std::vector<std::string>{"error t1 duplicate_id"});
    CHECK(!s.cancel("t1").empty() && s.cancel("nope").empty());
    // the generate on the wire: framed, with the exact bpm string and a 64-bit seed; no model key when empty
    framing::Reader r;
    const uint8_t* p = packet.data();
    size_t n = packet.size();
    CHECK(r.consume(p, n) == framing::Reader::Status::Packet && n == 0);
    osc::Message m;
    CHECK(osc::decode_message(r.packet(), r.packet_size(), m) == osc::Error::None);
    CHECK(m.address == "/stemd/generate" && m.tags == "ssssisssssisisisish");
    s.close_all("connection_lost", "gone");
    CHECK(e.log.back() == "error t1 connection_lost" && s.open_requests() == 0);

    Request bad = request();
    bad.bars = 0;
    CHECK(validate_request(bad) == "bars must be 1..256, got 0");
    bad = request();
    bad.bpm = "1e5";
    CHECK(!validate_request(bad).empty());
    bad = request();
    bad.meter = "34";
    CHECK(!validate_request(bad).empty());
    bad = request();
    bad.id = "a b";
    CHECK(!validate_request(bad).empty() && encode_generate(bad).empty());
    Request good = request();
    good.bpm = "275/2";
    good.model = "click";
    CHECK(validate_request(good).empty());
    CHECK(validate_request(request()).empty());
}

// extend: the continuation goes as a little-endian float32 blob with its rate and channels, and only when set
void test_continuation() {
    Request r = request();
    r.continuation = std::make_shared<const std::vector<float>>(std::vector<float>{0.5f, -0.25f, 1.0f, 0.0f, -1.0f, 0.125f});
    r.continuation_rate = 44100;
    r.continuation_channels = 2;
    CHECK(validate_request(r).empty());
    const std::vector<uint8_t> packet = encode_generate(r);
    osc::Message m;
    CHECK(!packet.empty() && osc::decode_message(packet.data(), packet.size(), m) == osc::Error::None);
    osc::ArgReader reader(m);
    osc::Arg a, value;
    int seen = 0;
    while (reader.next(a)) {
        if (!a.is_string() || (a.s != "continuation" && a.s != "continuation_rate" && a.s != "continuation_channels"))
            continue;
        const std::string key(a.s);
        CHECK(reader.next(value));
        ++seen;
        if (key == "continuation_rate") CHECK(value.tag == 'i' && value.i == 44100);
        if (key == "continuation_channels") CHECK(value.tag == 'i' && value.i == 2);
        if (key == "continuation") {
            CHECK(value.tag == 'b' && value.size == 24);
            // 0.5f is 0x3f000000: little-endian, its first byte is the low one
            CHECK(value.size == 24 && value.data[0] == 0x00 && value.data[3] == 0x3f);
            for (size_t i = 0; value.size == 24 && i < 6; ++i) {
                const uint32_t bits = uint32_t(value.data[i * 4]) | uint32_t(value.data[i * 4 + 1]) << 8 |
                                      uint32_t(value.data[i * 4 + 2]) << 16 | uint32_t(value.data[i * 4 + 3]) << 24;
                float f;
                std::memcpy(&f, &bits, 4);
                CHECK(f == (*r.continuation)[i]);
            }
        }
    }
    CHECK(seen == 3);
    // not set: none of the three keys
    const std::vector<uint8_t> plain = encode_generate(request());
    CHECK(std::search(plain.begin(), plain.end(), std::begin("continuation"), std::end("continuation") - 1) == plain.end());

    Request bad = r;
    bad.continuation = std::make_shared<const std::vector<float>>(std::vector<float>{0.5f, 0.5f, 0.5f});
    CHECK(validate_request(bad) == "continuation must be whole frames of continuation_channels floats");
    bad.continuation = std::make_shared<const std::vector<float>>();
    CHECK(!validate_request(bad).empty() && encode_generate(bad).empty());
    bad = r;
    bad.continuation_rate = 7999;
    CHECK(validate_request(bad) == "continuation_rate must be 8000..192000, got 7999");
    bad = r;
    bad.continuation_channels = 3;
    CHECK(!validate_request(bad).empty());
    bad = r;
    bad.continuation = std::make_shared<const std::vector<float>>(size_t(16) << 20, 0.0f);  // 64 MiB: the most
    CHECK(validate_request(bad).empty());
    bad.continuation = std::make_shared<const std::vector<float>>((size_t(16) << 20) + 2, 0.0f);
    CHECK(validate_request(bad) == "continuation must be at most 64 MiB");
}

}  // namespace

int main() {
    test_round_trip();
    test_malformed_messages();
    test_bundles();
    test_framing();
    test_session_good_traffic();
    test_session_drops_bad_events();
    test_session_memory();
    test_session_requests();
    test_continuation();
    std::printf("%d checks, %d failed\n", g_checks, g_failures);
    return g_failures == 0 ? 0 : 1;
}
