// OSC 1.0 for the stemd plugin: build messages, and read packets without trusting a byte of them.
//
// Decoding checks every length before it reads (padding, type tags, NUL-terminated strings inside the
// packet, blob sizes inside the packet, at most kMaxElements arguments and bundle elements, bundles
// nested at most kMaxBundleDepth deep), that padding is NUL as OSC 1.0 says (the daemon refuses
// anything else too), and returns a typed Error, never undefined behaviour. It does
// not allocate: a Message is views into the caller's packet buffer, valid while that buffer is.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace stemd::osc {

// What the daemon itself allows in one packet (stemd/osc.py): messages, arguments and array items.
constexpr size_t kMaxElements = 4096;
constexpr int kMaxBundleDepth = 8;

enum class Error : uint8_t {
    None = 0,
    Empty,              // a packet of 0 bytes
    Unaligned,          // a packet size that is not a multiple of 4
    NotOsc,             // starts with neither '/' nor "#bundle"
    Unterminated,       // a string without its NUL inside the packet
    PaddingPastEnd,     // a string's or blob's padding runs past the end
    BadPadding,         // a string's or blob's padding holds a byte that is not NUL
    BadUtf8,            // a string argument or address that is not UTF-8
    BadTypeTags,        // the type tag string does not start with ','
    UnsupportedTag,     // a type tag this reader does not know (arrays included)
    TooManyElements,    // more than kMaxElements
    Truncated,          // an argument runs past the end of the packet
    BadBlobSize,        // a negative blob size, or one past the end of the packet
    TrailingBytes,      // bytes left after the last argument
    BadBundleElement,   // a bundle element size <= 0, unaligned or past the end
    BundleTooDeep,      // bundles nested more than kMaxBundleDepth
    BadAddress,         // encoding: an address that does not start with '/'
    NulInString,        // encoding: a string holding a NUL byte
    BlobTooLarge,       // encoding: a blob over 2^31 - 1 bytes
};

const char* error_text(Error error);  // one short line, e.g. "blob size past the end of the packet"

// One decoded argument. Which fields mean something depends on `tag`:
//   i h (and c r t as their bits): `i`;  f d: `f`;  s S: `s`;  b m: `data` + `size`;  T F N I: none.
struct Arg {
    char tag = 0;
    int64_t i = 0;
    double f = 0.0;
    std::string_view s;
    const uint8_t* data = nullptr;
    size_t size = 0;

    bool is_int() const { return tag == 'i' || tag == 'h'; }
    bool is_number() const { return is_int() || tag == 'f' || tag == 'd'; }
    bool is_string() const { return tag == 's' || tag == 'S'; }
};

// A validated message: the address, the type tags (without ','), and its argument bytes.
struct Message {
    std::string_view address;
    std::string_view tags;
    const uint8_t* args = nullptr;
    size_t args_size = 0;

    size_t count() const { return tags.size(); }
};

// Reads a Message's arguments in order. Every read is bounds-checked again (a Message built by hand
// cannot make it read past args + args_size): next() returns false at the end or on a malformed one.
class ArgReader {
public:
    explicit ArgReader(const Message& message) : message_(message) {}
    bool next(Arg& out);
    Error error() const { return error_; }

private:
    const Message& message_;
    size_t tag_ = 0;
    size_t pos_ = 0;
    Error error_ = Error::None;
};

// Decodes one message (not a bundle) of `size` bytes at `data`, checking every argument.
Error decode_message(const uint8_t* data, size_t size, Message& out);

class MessageVisitor {
public:
    virtual ~MessageVisitor() = default;
    virtual void message(const Message& message) = 0;
};

// Decodes a packet (a message, or a bundle walked with bounds) and, only if all of it is well formed,
// calls `visitor` for each message in order. Nothing is visited when an Error is returned.
Error for_each_message(const uint8_t* data, size_t size, MessageVisitor& visitor);

// Builds one message. Errors are sticky: finish() returns an empty vector and error() says why.
class Builder {
public:
    explicit Builder(std::string_view address);
    Builder& s(std::string_view text);
    Builder& i(int32_t value);
    Builder& h(int64_t value);
    Builder& f(float value);
    Builder& d(double value);
    Builder& b(const uint8_t* data, size_t size);
    Builder& boolean(bool value);  // T or F
    Error error() const { return error_; }
    std::vector<uint8_t> finish() const;

private:
    Builder& word(char tag, uint64_t bits, size_t bytes);  // a 4- or 8-byte big-endian argument

    std::string address_;
    std::string tags_{","};
    std::vector<uint8_t> payload_;
    Error error_ = Error::None;
};

// Big-endian helpers shared with the framing and the link.
inline uint32_t read_be32(const uint8_t* p) {
    return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}
inline uint64_t read_be64(const uint8_t* p) {
    return (uint64_t(read_be32(p)) << 32) | uint64_t(read_be32(p + 4));
}
void append_be32(std::vector<uint8_t>& out, uint32_t value);
void append_be64(std::vector<uint8_t>& out, uint64_t value);

}  // namespace stemd::osc
