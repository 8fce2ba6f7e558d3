// OSC 1.0 length-prefix framing: see framing.hpp.
#include "framing.hpp"

#include <algorithm>
#include <cstring>
#include <new>

#include "osc.hpp"

namespace stemd::framing {

const char* error_text(Error error) {
    switch (error) {
        case Error::None: return "no error";
        case Error::NegativeSize: return "negative packet size";
        case Error::TooLarge: return "packet size over the limit";
        case Error::OutOfMemory: return "out of memory for a packet";
    }
    return "unknown error";
}

namespace {
// A buffer kept between packets up to this size; a larger one is let go once its packet is read.
constexpr size_t kKeep = 1u << 20;
// The first room made for a packet's bytes (or the packet's size, when smaller).
constexpr size_t kFirstCapacity = 4096;

// Makes room in `body` for `more` bytes of a packet of `expected` bytes, growing by doubling but never
// past `expected`: what a packet's buffer holds follows the bytes that came, not what its header claims.
bool grow(std::vector<uint8_t>& body, size_t more, size_t expected) {
    const size_t needed = body.size() + more;
    if (needed <= body.capacity()) return true;
    const size_t wanted = std::min(expected, std::max(needed, std::max(body.capacity() * 2, kFirstCapacity)));
#if defined(__cpp_exceptions)
    try {
        body.reserve(wanted);
    } catch (const std::bad_alloc&) {
        return false;
    }
#else
    body.reserve(wanted);
#endif
    return true;
}
}  // namespace

void Reader::reset() {
    header_filled_ = 0;
    in_body_ = false;
    delivered_ = false;
    std::vector<uint8_t>().swap(body_);
    expected_ = 0;
    error_ = Error::None;
    bad_size_ = 0;
}

Reader::Status Reader::consume(const uint8_t*& data, size_t& size) {
    if (error_ != Error::None) return Status::Failed;
    if (delivered_) {  // the previous packet was read: start the next one
        delivered_ = false;
        if (body_.capacity() > kKeep) std::vector<uint8_t>().swap(body_);
        body_.clear();
    }
    while (true) {
        if (!in_body_) {
            const size_t take = std::min(size, size_t(4) - header_filled_);
            if (take > 0) std::memcpy(header_ + header_filled_, data, take);
            header_filled_ += take;
            data += take;
            size -= take;
            if (header_filled_ < 4) return Status::NeedMore;
            const int32_t announced = int32_t(osc::read_be32(header_));
            header_filled_ = 0;
            if (announced < 0) {
                error_ = Error::NegativeSize;
                bad_size_ = announced;
                return Status::Failed;
            }
            if (size_t(announced) > max_packet_) {
                error_ = Error::TooLarge;
                bad_size_ = announced;
                return Status::Failed;
            }
            // The size is checked; its buffer grows as the packet's bytes arrive (a header alone costs nothing).
            expected_ = size_t(announced);
            body_.clear();
            in_body_ = true;
        }
        const size_t take = std::min(size, expected_ - body_.size());
        if (take > 0) {
            if (!grow(body_, take, expected_)) {
                error_ = Error::OutOfMemory;
                bad_size_ = int64_t(expected_);
                return Status::Failed;
            }
            body_.insert(body_.end(), data, data + take);
        }
        data += take;
        size -= take;
        if (body_.size() < expected_) return Status::NeedMore;
        in_body_ = false;
        delivered_ = true;
        return Status::Packet;
    }
}

void append_framed(std::vector<uint8_t>& out, const std::vector<uint8_t>& packet) {
    osc::append_be32(out, uint32_t(packet.size()));
    out.insert(out.end(), packet.begin(), packet.end());
}

}  // namespace stemd::framing
