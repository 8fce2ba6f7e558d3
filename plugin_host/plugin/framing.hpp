// OSC 1.0 stream framing for the stemd plugin: a big-endian int32 size before each packet (what the
// daemon speaks to a client that spoke it first, and liblo's TCP).
//
// The size is checked before anything is allocated for the packet: negative, or over the cap
// (64 MiB + 64 KiB, the daemon's own limit), is an error and the connection must be dropped; its
// framing is lost. A checked size allocates nothing by itself: the packet's buffer grows as its bytes
// arrive (doubling, never past the size), and one over 1 MiB is let go once its packet has been read, so
// a peer that announces 64 MiB and sends 10 bytes costs 4 KiB, not 64 MiB.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace stemd::framing {

constexpr size_t kMaxPacket = 64u * 1024u * 1024u + 64u * 1024u;

enum class Error : uint8_t {
    None = 0,
    NegativeSize,  // the size header reads as a negative int32
    TooLarge,      // the size header is over the reader's cap
    OutOfMemory,   // the packet's buffer could not be allocated
};

const char* error_text(Error error);

class Reader {
public:
    enum class Status { NeedMore, Packet, Failed };

    explicit Reader(size_t max_packet = kMaxPacket) : max_packet_(max_packet) {}

    // Takes bytes from [data, data + size), advancing both, until a packet is complete (Packet: read
    // it with packet()/packet_size() before the next call), the bytes run out (NeedMore), or the
    // stream is broken (Failed: error() and bad_size() say why; every later call fails too).
    Status consume(const uint8_t*& data, size_t& size);

    const uint8_t* packet() const { return body_.data(); }
    size_t packet_size() const { return body_.size(); }
    Error error() const { return error_; }
    int64_t bad_size() const { return bad_size_; }  // the size header that broke the stream
    size_t max_packet() const { return max_packet_; }
    size_t buffered() const { return delivered_ ? 0 : header_filled_ + body_.size(); }  // bytes of a packet under way
    size_t capacity() const { return body_.capacity(); }  // the packet buffer's room: follows the bytes that came
    void reset();  // a new connection

private:
    size_t max_packet_;
    uint8_t header_[4] = {0, 0, 0, 0};
    size_t header_filled_ = 0;
    bool in_body_ = false;
    bool delivered_ = false;
    std::vector<uint8_t> body_;  // the packet's bytes so far
    size_t expected_ = 0;        // the packet's size, from its header
    Error error_ = Error::None;
    int64_t bad_size_ = 0;
};

// Appends `packet` to `out` with its size header.
void append_framed(std::vector<uint8_t>& out, const std::vector<uint8_t>& packet);

}  // namespace stemd::framing
