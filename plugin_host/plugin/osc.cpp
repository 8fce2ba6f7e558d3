// OSC 1.0 codec: see osc.hpp. Every read below is preceded by a check that it fits in the packet.
#include "osc.hpp"

#include <cstring>
#include <limits>

namespace stemd::osc {

const char* error_text(Error error) {
    switch (error) {
        case Error::None: return "no error";
        case Error::Empty: return "empty packet";
        case Error::Unaligned: return "packet size is not a multiple of 4";
        case Error::NotOsc: return "an OSC message starts with '/' and a bundle with '#bundle'";
        case Error::Unterminated: return "string is not NUL-terminated inside the packet";
        case Error::PaddingPastEnd: return "padding runs past the end of the packet";
        case Error::BadPadding: return "padding holds bytes other than NUL";
        case Error::BadUtf8: return "string is not valid UTF-8";
        case Error::BadTypeTags: return "the type tag string must start with ','";
        case Error::UnsupportedTag: return "unsupported OSC type tag";
        case Error::TooManyElements: return "more than 4096 elements in one packet";
        case Error::Truncated: return "packet ends inside an argument";
        case Error::BadBlobSize: return "blob size is negative or past the end of the packet";
        case Error::TrailingBytes: return "bytes left over after the arguments";
        case Error::BadBundleElement: return "bundle element size is not positive, aligned and inside the bundle";
        case Error::BundleTooDeep: return "bundles nested too deeply";
        case Error::BadAddress: return "OSC addresses start with '/'";
        case Error::NulInString: return "OSC strings cannot contain NUL";
        case Error::BlobTooLarge: return "blob over 2^31-1 bytes";
    }
    return "unknown error";
}

namespace {

size_t padded(size_t n) { return (n + 3) & ~size_t(3); }

bool valid_utf8(const uint8_t* p, size_t n) {
    size_t i = 0;
    while (i < n) {
        const uint8_t c = p[i];
        if (c < 0x80) {
            ++i;
            continue;
        }
        size_t extra;
        uint32_t code;
        if ((c & 0xE0) == 0xC0) {
            extra = 1;
            code = c & 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            extra = 2;
            code = c & 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            extra = 3;
            code = c & 0x07;
        } else {
            return false;
        }
        if (extra > n - i - 1) return false;
        for (size_t k = 1; k <= extra; ++k) {
            if ((p[i + k] & 0xC0) != 0x80) return false;
            code = (code << 6) | (p[i + k] & 0x3F);
        }
        const uint32_t smallest[4] = {0, 0x80, 0x800, 0x10000};
        if (code < smallest[extra] || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) return false;
        i += extra + 1;
    }
    return true;
}

// OSC 1.0 pads strings and blobs with NUL bytes only (the daemon's decoder refuses anything else too).
bool nul_padding(const uint8_t* p, size_t n) {
    for (size_t k = 0; k < n; ++k)
        if (p[k] != 0) return false;
    return true;
}

// A big-endian word of `bytes` (4 or 8) at data[pos], if `left` bytes hold it.
bool read_word(const uint8_t* data, size_t left, size_t& pos, size_t bytes, uint64_t& out) {
    if (left < bytes) return false;
    out = bytes == 4 ? uint64_t(read_be32(data + pos)) : read_be64(data + pos);
    pos += bytes;
    return true;
}

template <typename Float, typename Bits>
double float_of(uint64_t word) {
    const Bits bits = Bits(word);
    Float value;
    std::memcpy(&value, &bits, sizeof value);
    return double(value);
}

// A NUL-terminated, 4-byte padded string at data[pos], inside [0, size).
Error read_string(const uint8_t* data, size_t size, size_t& pos, std::string_view& out) {
    if (pos >= size) return Error::Truncated;
    const void* nul = std::memchr(data + pos, 0, size - pos);
    if (nul == nullptr) return Error::Unterminated;
    const size_t length = size_t(static_cast<const uint8_t*>(nul) - (data + pos));
    const size_t span = padded(length + 1);
    if (span > size - pos) return Error::PaddingPastEnd;
    if (!nul_padding(data + pos + length + 1, span - length - 1)) return Error::BadPadding;
    if (!valid_utf8(data + pos, length)) return Error::BadUtf8;
    out = std::string_view(reinterpret_cast<const char*>(data + pos), length);
    pos += span;
    return Error::None;
}

Error read_arg(char tag, const uint8_t* data, size_t size, size_t& pos, Arg& out) {
    out = Arg{};
    out.tag = tag;
    const size_t left = size - pos;  // callers keep pos <= size
    uint64_t word = 0;
    switch (tag) {
        case 'i':
        case 'c':
        case 'r':
            if (!read_word(data, left, pos, 4, word)) return Error::Truncated;
            out.i = tag == 'r' ? int64_t(word) : int64_t(int32_t(uint32_t(word)));
            return Error::None;
        case 'h':
        case 't':
            if (!read_word(data, left, pos, 8, word)) return Error::Truncated;
            out.i = int64_t(word);
            return Error::None;
        case 'f':
            if (!read_word(data, left, pos, 4, word)) return Error::Truncated;
            out.f = float_of<float, uint32_t>(word);
            return Error::None;
        case 'd':
            if (!read_word(data, left, pos, 8, word)) return Error::Truncated;
            out.f = float_of<double, uint64_t>(word);
            return Error::None;
        case 'm':
            if (left < 4) return Error::Truncated;
            out.data = data + pos;
            out.size = 4;
            pos += 4;
            return Error::None;
        case 's':
        case 'S':
            return read_string(data, size, pos, out.s);
        case 'b': {
            if (left < 4) return Error::Truncated;
            const int32_t blob = int32_t(read_be32(data + pos));
            if (blob < 0 || size_t(blob) > left - 4) return Error::BadBlobSize;
            if (padded(size_t(blob)) > left - 4) return Error::PaddingPastEnd;
            if (!nul_padding(data + pos + 4 + size_t(blob), padded(size_t(blob)) - size_t(blob))) return Error::BadPadding;
            out.data = data + pos + 4;
            out.size = size_t(blob);
            pos += 4 + padded(size_t(blob));
            return Error::None;
        }
        case 'T':
        case 'F':
        case 'N':
        case 'I':
            return Error::None;
        default:
            return Error::UnsupportedTag;
    }
}

// The address and type tags of a message; args left at the first argument byte.
Error read_header(const uint8_t* data, size_t size, Message& out, size_t& pos) {
    out = Message{};
    if (size == 0) return Error::Empty;
    if (size % 4 != 0) return Error::Unaligned;
    if (data[0] != '/') return Error::NotOsc;
    pos = 0;
    if (Error e = read_string(data, size, pos, out.address); e != Error::None) return e;
    if (pos == size) return Error::None;  // OSC 1.0 allows a message with no type tag string
    std::string_view tags;
    if (Error e = read_string(data, size, pos, tags); e != Error::None) return e;
    if (tags.empty() || tags[0] != ',') return Error::BadTypeTags;
    out.tags = tags.substr(1);
    if (out.tags.size() > kMaxElements) return Error::TooManyElements;
    return Error::None;
}

Error walk(const uint8_t* data, size_t size, int depth, size_t& elements, MessageVisitor* visitor) {
    static const uint8_t kBundle[8] = {'#', 'b', 'u', 'n', 'd', 'l', 'e', 0};
    if (size >= 8 && std::memcmp(data, kBundle, 8) == 0) {
        if (size % 4 != 0) return Error::Unaligned;
        if (depth >= kMaxBundleDepth) return Error::BundleTooDeep;
        if (size < 16) return Error::Truncated;
        size_t pos = 16;  // header and timetag (ignored, as the daemon does)
        while (pos < size) {
            if (size - pos < 4) return Error::BadBundleElement;
            const int32_t element = int32_t(read_be32(data + pos));
            pos += 4;
            if (element <= 0 || element % 4 != 0 || size_t(element) > size - pos) return Error::BadBundleElement;
            if (++elements > kMaxElements) return Error::TooManyElements;
            if (Error e = walk(data + pos, size_t(element), depth + 1, elements, visitor); e != Error::None) return e;
            pos += size_t(element);
        }
        return Error::None;
    }
    Message message;
    if (Error e = decode_message(data, size, message); e != Error::None) return e;
    elements += message.count();
    if (elements > kMaxElements) return Error::TooManyElements;
    if (visitor != nullptr) visitor->message(message);
    return Error::None;
}

}  // namespace

bool ArgReader::next(Arg& out) {
    if (error_ != Error::None || tag_ >= message_.tags.size()) return false;
    if (pos_ > message_.args_size) {
        error_ = Error::Truncated;
        return false;
    }
    const Error e = read_arg(message_.tags[tag_], message_.args, message_.args_size, pos_, out);
    if (e != Error::None) {
        error_ = e;
        return false;
    }
    ++tag_;
    return true;
}

Error decode_message(const uint8_t* data, size_t size, Message& out) {
    size_t pos = 0;
    if (Error e = read_header(data, size, out, pos); e != Error::None) {
        out = Message{};
        return e;
    }
    size_t check = pos;
    for (char tag : out.tags) {
        Arg arg;
        if (Error e = read_arg(tag, data, size, check, arg); e != Error::None) {
            out = Message{};
            return e;
        }
    }
    if (check != size) {
        out = Message{};
        return Error::TrailingBytes;
    }
    out.args = data + pos;
    out.args_size = size - pos;
    return Error::None;
}

Error for_each_message(const uint8_t* data, size_t size, MessageVisitor& visitor) {
    if (size == 0) return Error::Empty;
    size_t elements = 0;
    if (Error e = walk(data, size, 0, elements, nullptr); e != Error::None) return e;
    elements = 0;
    return walk(data, size, 0, elements, &visitor);
}

void append_be32(std::vector<uint8_t>& out, uint32_t value) {
    const uint8_t bytes[4] = {uint8_t(value >> 24), uint8_t(value >> 16), uint8_t(value >> 8), uint8_t(value)};
    out.insert(out.end(), bytes, bytes + 4);
}

void append_be64(std::vector<uint8_t>& out, uint64_t value) {
    append_be32(out, uint32_t(value >> 32));
    append_be32(out, uint32_t(value));
}

namespace {

void append_string(std::vector<uint8_t>& out, std::string_view text) {
    out.insert(out.end(), text.begin(), text.end());
    const size_t zeros = padded(text.size() + 1) - text.size();
    out.insert(out.end(), zeros, uint8_t(0));
}

}  // namespace

Builder::Builder(std::string_view address) : address_(address) {
    if (address.empty() || address[0] != '/') error_ = Error::BadAddress;
    if (address.find('\0') != std::string_view::npos) error_ = Error::NulInString;
}

Builder& Builder::s(std::string_view text) {
    if (text.find('\0') != std::string_view::npos) error_ = Error::NulInString;
    if (error_ != Error::None) return *this;
    tags_ += 's';
    append_string(payload_, text);
    return *this;
}

Builder& Builder::word(char tag, uint64_t bits, size_t bytes) {
    tags_ += tag;
    if (bytes == 4)
        append_be32(payload_, uint32_t(bits));
    else
        append_be64(payload_, bits);
    return *this;
}

namespace {
template <typename Bits, typename Float>
Bits bits_of(Float value) {
    Bits bits;
    std::memcpy(&bits, &value, sizeof bits);
    return bits;
}
}  // namespace

Builder& Builder::i(int32_t value) { return word('i', uint32_t(value), 4); }
Builder& Builder::h(int64_t value) { return word('h', uint64_t(value), 8); }
Builder& Builder::f(float value) { return word('f', bits_of<uint32_t>(value), 4); }
Builder& Builder::d(double value) { return word('d', bits_of<uint64_t>(value), 8); }

Builder& Builder::b(const uint8_t* data, size_t size) {
    if (size > size_t(std::numeric_limits<int32_t>::max())) error_ = Error::BlobTooLarge;
    if (error_ != Error::None) return *this;
    tags_ += 'b';
    append_be32(payload_, uint32_t(size));
    if (size > 0) payload_.insert(payload_.end(), data, data + size);
    payload_.insert(payload_.end(), padded(size) - size, uint8_t(0));
    return *this;
}

Builder& Builder::boolean(bool value) {
    tags_ += value ? 'T' : 'F';
    return *this;
}

std::vector<uint8_t> Builder::finish() const {
    std::vector<uint8_t> out;
    if (error_ != Error::None) return out;
    out.reserve(padded(address_.size() + 1) + padded(tags_.size() + 1) + payload_.size());
    append_string(out, address_);
    append_string(out, tags_);
    out.insert(out.end(), payload_.begin(), payload_.end());
    return out;
}

}  // namespace stemd::osc
