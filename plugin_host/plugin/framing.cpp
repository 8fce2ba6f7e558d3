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
}  // namespace

void Reader::reset() {
    header_filled_ = 0;
    in_body_ = false;
    delivered_ = false;
    std::vector<uint8_t>().swap(body_);
    filled_ = 0;
    error_ = Error::None;
    bad_size_ = 0;
}

Reader::Status Reader::consume(const uint8_t*& data, size_t& size) {
    if (error_ != Error::None) return Status::Failed;
    if (delivered_) {  // the previous packet was read: start the next one
        delivered_ = false;
        if (body_.capacity() > kKeep) std::vector<uint8_t>().swap(body_);
        body_.clear();
        filled_ = 0;
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
            // The size is checked: now, and only now, its buffer.
#if defined(__cpp_exceptions)
            try {
                body_.resize(size_t(announced));
            } catch (const std::bad_alloc&) {
                error_ = Error::OutOfMemory;
                bad_size_ = announced;
                return Status::Failed;
            }
#else
            body_.resize(size_t(announced));
#endif
            filled_ = 0;
            in_body_ = true;
        }
        const size_t take = std::min(size, body_.size() - filled_);
        if (take > 0) std::memcpy(body_.data() + filled_, data, take);
        filled_ += take;
        data += take;
        size -= take;
        if (filled_ < body_.size()) return Status::NeedMore;
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
