#include "take_store.hpp"

#include "json_escape.hpp"

#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#if defined(_WIN32)
#include <io.h>
#else
#include <fcntl.h>
#include <unistd.h>
#endif

namespace stemd {

// ---- JSON -------------------------------------------------------------------------------------------------
const Json* Json::get(const char* key) const noexcept
{
    if (type != Type::Object) return nullptr;
    for (const auto& member : members)
        if (member.first == key) return &member.second;
    return nullptr;
}

std::string Json::str(const char* key, const std::string& fallback) const
{
    const Json* v = get(key);
    return v && v->type == Type::String ? v->text : fallback;
}

double Json::num(const char* key, double fallback) const noexcept
{
    const Json* v = get(key);
    return v && v->type == Type::Number ? v->number : fallback;
}

bool Json::flag(const char* key, bool fallback) const noexcept
{
    const Json* v = get(key);
    return v && v->type == Type::Bool ? v->boolean : fallback;
}

namespace {

class Parser {
public:
    Parser(const std::string& text, std::string& error) : fText(text), fError(error) {}

    bool document(Json& out)
    {
        if (fText.size() > kMaxJsonBytes) return fail("JSON over 16 MiB");
        if (!value(out, 0)) return false;
        skipSpace();
        return fPos == fText.size() || fail("text after the JSON value");
    }

private:
    bool fail(const char* what)
    {
        if (fError.empty()) fError = std::string(what) + " at byte " + std::to_string(fPos);
        return false;
    }

    void skipSpace()
    {
        while (fPos < fText.size() && (fText[fPos] == ' ' || fText[fPos] == '\n' || fText[fPos] == '\r' ||
                                       fText[fPos] == '\t'))
            ++fPos;
    }

    bool literal(const char* word)
    {
        const size_t n = std::strlen(word);
        if (fText.compare(fPos, n, word) != 0) return fail("unknown literal");
        fPos += n;
        return true;
    }

    bool value(Json& out, int depth)
    {
        if (depth >= kMaxJsonDepth) return fail("JSON nested too deep");
        skipSpace();
        if (fPos >= fText.size()) return fail("JSON ends early");
        const char c = fText[fPos];
        if (c == '{') return object(out, depth);
        if (c == '[') return array(out, depth);
        if (c == '"') {
            out.type = Json::Type::String;
            return string(out.text);
        }
        if (c == 't') {
            out.type = Json::Type::Bool;
            out.boolean = true;
            return literal("true");
        }
        if (c == 'f') {
            out.type = Json::Type::Bool;
            out.boolean = false;
            return literal("false");
        }
        if (c == 'n') {
            out.type = Json::Type::Null;
            return literal("null");
        }
        return number(out);
    }

    bool number(Json& out)
    {
        const size_t start = fPos;
        if (fPos < fText.size() && fText[fPos] == '-') ++fPos;
        size_t digits = 0;
        while (fPos < fText.size() && (std::isdigit(static_cast<unsigned char>(fText[fPos])) || fText[fPos] == '.' ||
                                       fText[fPos] == 'e' || fText[fPos] == 'E' || fText[fPos] == '+' ||
                                       fText[fPos] == '-')) {
            ++fPos;
            ++digits;
        }
        if (digits == 0 || fPos - start > 40) return fail("bad number");
        const std::string token = fText.substr(start, fPos - start);
        char* end = nullptr;
        const double v = std::strtod(token.c_str(), &end);
        if (end != token.c_str() + token.size() || !std::isfinite(v)) return fail("bad number");
        out.type = Json::Type::Number;
        out.number = v;
        return true;
    }

    static void utf8(std::string& s, uint32_t cp)
    {
        if (cp < 0x80) {
            s += static_cast<char>(cp);
        } else if (cp < 0x800) {
            s += static_cast<char>(0xC0 | (cp >> 6));
            s += static_cast<char>(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
            s += static_cast<char>(0xE0 | (cp >> 12));
            s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
            s += static_cast<char>(0x80 | (cp & 0x3F));
        } else {
            s += static_cast<char>(0xF0 | (cp >> 18));
            s += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
            s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
            s += static_cast<char>(0x80 | (cp & 0x3F));
        }
    }

    bool hex4(uint32_t& cp)
    {
        if (fPos + 4 > fText.size()) return fail("short \\u escape");
        cp = 0;
        for (int i = 0; i < 4; ++i) {
            const char h = fText[fPos++];
            cp <<= 4;
            if (h >= '0' && h <= '9') cp |= static_cast<uint32_t>(h - '0');
            else if (h >= 'a' && h <= 'f') cp |= static_cast<uint32_t>(h - 'a' + 10);
            else if (h >= 'A' && h <= 'F') cp |= static_cast<uint32_t>(h - 'A' + 10);
            else return fail("bad \\u escape");
        }
        return true;
    }

    bool string(std::string& out)
    {
        ++fPos;  // the opening quote
        out.clear();
        while (fPos < fText.size()) {
            const char c = fText[fPos++];
            if (c == '"') return true;
            if (static_cast<unsigned char>(c) < 0x20) return fail("control character in a string");
            if (c != '\\') {
                out += c;
                continue;
            }
            if (fPos >= fText.size()) break;
            const char e = fText[fPos++];
            switch (e) {
            case '"': out += '"'; break;
            case '\\': out += '\\'; break;
            case '/': out += '/'; break;
            case 'b': out += '\b'; break;
            case 'f': out += '\f'; break;
            case 'n': out += '\n'; break;
            case 'r': out += '\r'; break;
            case 't': out += '\t'; break;
            case 'u': {
                uint32_t cp = 0;
                if (!hex4(cp)) return false;
                if (cp >= 0xD800 && cp < 0xDC00 && fPos + 6 <= fText.size() && fText[fPos] == '\\' &&
                    fText[fPos + 1] == 'u') {
                    fPos += 2;
                    uint32_t low = 0;
                    if (!hex4(low)) return false;
                    if (low >= 0xDC00 && low < 0xE000) cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
                    else cp = 0xFFFD;
                } else if (cp >= 0xD800 && cp < 0xE000) {
                    cp = 0xFFFD;
                }
                utf8(out, cp);
                break;
            }
            default: return fail("bad escape");
            }
        }
        return fail("unterminated string");
    }

    // The items of an array or the members of an object, from the opening bracket to `close`, each
    // read by `item`.
    template <typename Item>
    bool items(char close, const char* unterminated, const char* expected, Item item)
    {
        ++fPos;
        skipSpace();
        if (fPos < fText.size() && fText[fPos] == close) {
            ++fPos;
            return true;
        }
        for (;;) {
            if (!item()) return false;
            skipSpace();
            if (fPos >= fText.size()) return fail(unterminated);
            if (fText[fPos] == ',') {
                ++fPos;
                continue;
            }
            if (fText[fPos] == close) {
                ++fPos;
                return true;
            }
            return fail(expected);
        }
    }

    bool array(Json& out, int depth)
    {
        out.type = Json::Type::Array;
        return items(']', "unterminated array", "expected , or ]", [&] {
            out.items.emplace_back();
            return value(out.items.back(), depth + 1);
        });
    }

    bool object(Json& out, int depth)
    {
        out.type = Json::Type::Object;
        return items('}', "unterminated object", "expected , or }", [&] {
            skipSpace();
            if (fPos >= fText.size() || fText[fPos] != '"') return fail("expected a key");
            out.members.emplace_back();
            if (!string(out.members.back().first)) return false;
            skipSpace();
            if (fPos >= fText.size() || fText[fPos] != ':') return fail("expected :");
            ++fPos;
            return value(out.members.back().second, depth + 1);
        });
    }

    const std::string& fText;
    std::string& fError;
    size_t fPos = 0;
};

}  // namespace

bool parseJson(const std::string& text, Json& out, std::string& error)
{
    error.clear();
    out = Json();
    Parser parser(text, error);
    return parser.document(out);
}

std::string jsonString(const std::string& value)
{
    return json_escape(value);
}

// ---- names and files ------------------------------------------------------------------------------------
std::string slug(const std::string& text)
{
    std::vector<std::string> words;
    std::string word;
    for (size_t i = 0; i <= text.size() && words.size() < 5; ++i) {
        const char c = i < text.size() ? static_cast<char>(std::tolower(static_cast<unsigned char>(text[i]))) : ' ';
        if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) {
            word += c;
        } else if (!word.empty()) {
            words.push_back(word);
            word.clear();
        }
    }
    std::string out;
    for (const auto& w : words) out += (out.empty() ? "" : "-") + w;
    out = out.substr(0, 40);
    while (!out.empty() && out.back() == '-') out.pop_back();
    while (!out.empty() && out.front() == '-') out.erase(0, 1);
    return out.empty() ? "take" : out;
}

std::string takePrefix(const std::string& prompt, int32_t startBar)
{
    char bar[32];
    std::snprintf(bar, sizeof bar, "_bar%03d", startBar + 1);
    return slug(prompt) + bar;
}

std::string takeName(const std::string& prompt, int32_t startBar, int32_t take, int32_t variation, bool named)
{
    char rest[48];
    if (named)
        std::snprintf(rest, sizeof rest, "_take%02d_v%d", take, variation + 1);
    else
        std::snprintf(rest, sizeof rest, "_take%02d", take);
    return takePrefix(prompt, startBar) + rest;
}

int32_t nextTakeNumber(const std::string& folder, const std::string& prefix)
{
    namespace fs = std::filesystem;
    int32_t highest = 0;
    std::error_code ec;
    const std::string lead = prefix + "_take";
    for (fs::directory_iterator it(folder, ec), end; !ec && it != end; it.increment(ec)) {
        const std::string name = it->path().filename().string();
        if (name.compare(0, lead.size(), lead) != 0) continue;
        int32_t n = 0;
        size_t i = lead.size();
        for (; i < name.size() && i < lead.size() + 6 && std::isdigit(static_cast<unsigned char>(name[i])); ++i)
            n = n * 10 + (name[i] - '0');
        if (i > lead.size() && n > highest) highest = n;
    }
    return highest + 1;
}

bool atomicWrite(const std::string& path, const std::string& data, std::string& error, bool replace)
{
    std::random_device rd;
    char suffix[32];
    std::snprintf(suffix, sizeof suffix, ".%08x.partial", rd());
    const std::string partial = path + suffix;
    {
        std::ofstream f(partial, std::ios::binary | std::ios::trunc);
        if (!f) {
            error = "cannot write " + partial + ": " + std::strerror(errno);
            return false;
        }
        f.write(data.data(), static_cast<std::streamsize>(data.size()));
        f.flush();
        if (!f) {
            error = "cannot write " + partial + " (disk full?)";
            f.close();
            std::remove(partial.c_str());
            return false;
        }
    }
#if !defined(_WIN32)
    const int fd = ::open(partial.c_str(), O_RDONLY);
    if (fd >= 0) {
        ::fsync(fd);
        ::close(fd);
    }
#endif
    std::error_code ec;
#if !defined(_WIN32)
    if (!replace) {  // published only where no file is: link() fails on an existing name, rename() would not
        const bool linked = ::link(partial.c_str(), path.c_str()) == 0;
        const int why = errno;
        std::remove(partial.c_str());
        if (!linked) error = why == EEXIST ? "exists: " + path : "cannot write " + path + ": " + std::strerror(why);
        return linked;
    }
#else
    if (!replace && std::filesystem::exists(path, ec)) {
        std::remove(partial.c_str());
        error = "exists: " + path;
        return false;
    }
#endif
    std::filesystem::rename(partial, path, ec);
    if (ec) {
        error = "cannot rename " + partial + ": " + ec.message();
        std::remove(partial.c_str());
        return false;
    }
    return true;
}

namespace {

void put16(std::string& s, uint32_t v)
{
    s += static_cast<char>(v & 0xFF);
    s += static_cast<char>((v >> 8) & 0xFF);
}

void put32(std::string& s, uint32_t v)
{
    put16(s, v & 0xFFFF);
    put16(s, v >> 16);
}

uint32_t get16(const unsigned char* p) { return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8); }
uint32_t get32(const unsigned char* p) { return get16(p) | (get16(p + 2) << 16); }

}  // namespace

std::string wavFloat32(const float* interleaved, int64_t frames, int32_t channels, uint32_t sampleRate)
{
    // as stemd.takes.wav_header: fmt (16 bytes), fact, data
    const uint32_t block = static_cast<uint32_t>(channels) * 4u;
    const uint32_t size = static_cast<uint32_t>(frames) * block;
    std::string out;
    out.reserve(64 + size);
    out += "RIFF";
    put32(out, 4 + 8 + 16 + 12 + 8 + size);
    out += "WAVEfmt ";
    put32(out, 16);
    put16(out, 3);
    put16(out, static_cast<uint32_t>(channels));
    put32(out, sampleRate);
    put32(out, sampleRate * block);
    put16(out, block);
    put16(out, 32);
    out += "fact";
    put32(out, 4);
    put32(out, static_cast<uint32_t>(frames));
    out += "data";
    put32(out, size);
    const size_t start = out.size();
    out.resize(start + size);
    for (size_t i = 0; i < static_cast<size_t>(frames) * static_cast<size_t>(channels); ++i) {
        uint32_t bits = 0;
        std::memcpy(&bits, &interleaved[i], 4);
        for (int b = 0; b < 4; ++b) out[start + i * 4 + static_cast<size_t>(b)] = static_cast<char>((bits >> (8 * b)) & 0xFF);
    }
    return out;
}

bool readWav(const std::string& path, int64_t maxFrames, std::vector<float>& out, uint32_t& sampleRate,
             std::string& error)
{
    std::ifstream f(path, std::ios::binary);
    if (!f) {
        error = "cannot open " + path;
        return false;
    }
    unsigned char head[12];
    if (!f.read(reinterpret_cast<char*>(head), 12) || std::memcmp(head, "RIFF", 4) != 0 ||
        std::memcmp(head + 8, "WAVE", 4) != 0) {
        error = path + " is not a WAV file";
        return false;
    }
    uint32_t format = 0, channels = 0, bits = 0;
    sampleRate = 0;
    for (int chunks = 0; chunks < 64; ++chunks) {
        unsigned char ch[8];
        if (!f.read(reinterpret_cast<char*>(ch), 8)) break;
        const uint32_t size = get32(ch + 4);
        if (std::memcmp(ch, "fmt ", 4) == 0) {
            if (size < 16 || size > 64) break;
            unsigned char fmt[64];
            if (!f.read(reinterpret_cast<char*>(fmt), size)) break;
            format = get16(fmt);
            channels = get16(fmt + 2);
            sampleRate = get32(fmt + 4);
            bits = get16(fmt + 14);
            if (format == 0xFFFE && size >= 26) format = get16(fmt + 24);  // WAVE_FORMAT_EXTENSIBLE
            if (size % 2) f.ignore(1);
        } else if (std::memcmp(ch, "data", 4) == 0) {
            if (channels < 1 || channels > 64 || sampleRate < 1000 || sampleRate > 768000 ||
                !((format == 3 && bits == 32) || (format == 1 && (bits == 16 || bits == 24 || bits == 32)))) {
                error = path + ": not a float32 or 16/24/32-bit PCM WAV";
                return false;
            }
            const uint32_t bytes = bits / 8, block = bytes * channels;
            int64_t frames = size / block;
            if (frames > maxFrames) frames = maxFrames;
            std::vector<unsigned char> raw(static_cast<size_t>(frames) * block);
            f.read(reinterpret_cast<char*>(raw.data()), static_cast<std::streamsize>(raw.size()));
            frames = f.gcount() / block;
            out.assign(static_cast<size_t>(frames) * 2, 0.0f);
            for (int64_t i = 0; i < frames; ++i) {
                for (uint32_t c = 0; c < 2; ++c) {
                    const unsigned char* p = raw.data() + static_cast<size_t>(i) * block + (c < channels ? c : 0) * bytes;
                    float v = 0;
                    if (format == 3) {
                        const uint32_t u = get32(p);
                        std::memcpy(&v, &u, 4);
                        if (!std::isfinite(v)) v = 0;
                    } else if (bits == 16) {
                        v = static_cast<float>(static_cast<int16_t>(get16(p))) / 32768.0f;
                    } else if (bits == 24) {
                        const int32_t s = static_cast<int32_t>((get16(p) << 8) | (static_cast<uint32_t>(p[2]) << 24)) >> 8;
                        v = static_cast<float>(s) / 8388608.0f;
                    } else {
                        v = static_cast<float>(static_cast<int32_t>(get32(p))) / 2147483648.0f;
                    }
                    out[static_cast<size_t>(i) * 2 + c] = v;
                }
            }
            return true;
        } else {
            f.ignore(static_cast<std::streamsize>(size) + (size % 2));
        }
    }
    error = path + ": no audio found in the WAV";
    return false;
}

std::string sidecarWithDelivery(const std::string& daemonJson, const std::string& delivery)
{
    Json parsed;
    std::string error;
    if (!parseJson(daemonJson, parsed, error) || parsed.type != Json::Type::Object || parsed.get("delivery"))
        return "";
    // the daemon's text up to its closing brace, unchanged, then the delivery key
    size_t end = daemonJson.find_last_of('}');
    std::string head = daemonJson.substr(0, end);
    size_t last = head.find_last_not_of(" \t\r\n");
    head.resize(last + 1);
    const bool empty = head.back() == '{';
    return head + (empty ? "\n" : ",\n") + "  \"delivery\": " + delivery + "\n}\n";
}

std::string daemonSidecarOf(const std::string& sidecar, std::string& received)
{
    received.clear();
    Json parsed;
    std::string error;
    if (!parseJson(sidecar, parsed, error) || parsed.type != Json::Type::Object) return "";
    const Json* delivery = parsed.get("delivery");
    if (!delivery || delivery->type != Json::Type::Object) return "";
    received = delivery->str("received");
    const size_t key = sidecar.rfind("\n  \"delivery\": ");
    if (key == std::string::npos) return "";
    std::string head = sidecar.substr(0, key);
    if (!head.empty() && head.back() == ',') head.pop_back();
    head += "\n}";
    Json daemon;
    if (!parseJson(head, daemon, error) || daemon.type != Json::Type::Object || daemon.members.empty() ||
        daemon.get("delivery"))
        return "";
    return head;
}

std::vector<float> resampleStereo(const float* in, int64_t frames, uint32_t rateIn, uint32_t rateOut, int64_t outFrames)
{
    constexpr double kPi = 3.14159265358979323846;
    constexpr int kZeros = 32;
    std::vector<float> out(static_cast<size_t>(outFrames > 0 ? outFrames : 0) * 2, 0.0f);
    const double step = static_cast<double>(rateIn) / rateOut;
    const double cutoff = rateOut < rateIn ? static_cast<double>(rateOut) / rateIn : 1.0;
    const double half = kZeros / cutoff;  // the window's half width, in input frames
    for (int64_t j = 0; j < outFrames; ++j) {
        const double t = static_cast<double>(j) * step;
        const int64_t first = static_cast<int64_t>(std::ceil(t - half)), last = static_cast<int64_t>(std::floor(t + half));
        double left = 0, right = 0;
        for (int64_t k = first < 0 ? 0 : first; k <= last && k < frames; ++k) {
            const double x = t - static_cast<double>(k), u = x / half;
            const double sinc = x == 0 ? 1.0 : std::sin(kPi * cutoff * x) / (kPi * cutoff * x);
            const double w = cutoff * sinc * (0.42 + 0.5 * std::cos(kPi * u) + 0.08 * std::cos(2 * kPi * u));
            left += w * in[k * 2];
            right += w * in[k * 2 + 1];
        }
        out[static_cast<size_t>(j) * 2] = static_cast<float>(left);
        out[static_cast<size_t>(j) * 2 + 1] = static_cast<float>(right);
    }
    return out;
}

// ---- TakeAudio --------------------------------------------------------------------------------------------
TakeAudio::TakeAudio(uint64_t serial, int64_t startSample, const BarGrid& grid, int32_t startBar, int32_t bars,
                     int32_t variations)
    : fSerial(serial), fStart(startSample), fRate(grid.sampleRate())
{
    fOffsets.resize(static_cast<size_t>(bars) + 1);
    const int64_t first = grid.barStart(startBar);
    for (int32_t b = 0; b <= bars; ++b) fOffsets[static_cast<size_t>(b)] = grid.barStart(startBar + b) - first;
    const size_t samples = static_cast<size_t>(fOffsets.back()) * 2;
    for (int32_t v = 0; v < variations; ++v) fAudio.push_back(std::make_unique<float[]>(samples));
    const size_t flags = static_cast<size_t>(bars) * static_cast<size_t>(variations);
    fReady = std::make_unique<std::atomic<uint8_t>[]>(flags);
    for (size_t i = 0; i < flags; ++i) fReady[i].store(0, std::memory_order_relaxed);
}

int32_t TakeAudio::barAtOffset(int64_t offset) const noexcept
{
    // the last bar whose offset is <= offset (binary search over bars + 1 offsets)
    size_t lo = 0, hi = fOffsets.size() - 1;
    while (hi - lo > 1) {
        const size_t mid = (lo + hi) / 2;
        if (fOffsets[mid] <= offset) lo = mid;
        else hi = mid;
    }
    return static_cast<int32_t>(lo);
}

void TakeAudio::frameAt(int64_t offset, float& left, float& right) const noexcept
{
    left = right = 0.0f;
    if (offset < 0 || offset >= frames() || !enabled.load(std::memory_order_relaxed)) return;
    int32_t v = chosen.load(std::memory_order_relaxed);
    if (v < 0 || v >= variations()) v = 0;
    const int32_t bar = barAtOffset(offset);
    if (!barReady(v, bar)) return;
    const float* data = fAudio[static_cast<size_t>(v)].get() + offset * 2;
    left = data[0];
    right = data[1];
}

bool TakeAudio::barReady(int32_t variation, int32_t bar) const noexcept
{
    return fReady[static_cast<size_t>(variation) * static_cast<size_t>(bars()) + static_cast<size_t>(bar)].load(
               std::memory_order_acquire) != 0;
}

bool TakeAudio::complete(int32_t variation) const noexcept
{
    if (variation < 0 || variation >= variations()) return false;
    for (int32_t bar = 0; bar < bars(); ++bar)
        if (!barReady(variation, bar)) return false;
    return true;
}

void TakeAudio::fillBar(int32_t variation, int32_t bar, const float* interleaved, int64_t frames) noexcept
{
    if (variation < 0 || variation >= variations() || bar < 0 || bar >= bars()) return;
    const int64_t n = frames < barFrames(bar) ? frames : barFrames(bar);
    std::memcpy(fAudio[static_cast<size_t>(variation)].get() + barOffset(bar) * 2, interleaved,
                static_cast<size_t>(n) * 2 * sizeof(float));
    auto& flag = fReady[static_cast<size_t>(variation) * static_cast<size_t>(bars()) + static_cast<size_t>(bar)];
    if (flag.exchange(1, std::memory_order_release) == 0) fReceived.fetch_add(1, std::memory_order_relaxed);
}

// ---- the takes state ---------------------------------------------------------------------------------------
bool parseTempoText(const std::string& text, Tempo& out)
{
    if (text.empty() || text.size() > 32) return false;
    const size_t slash = text.find('/');
    if (slash != std::string::npos) {
        const std::string a = text.substr(0, slash), b = text.substr(slash + 1);
        if (a.empty() || b.empty() || a.size() > 15 || b.size() > 15) return false;
        for (const char c : a + b)
            if (!std::isdigit(static_cast<unsigned char>(c))) return false;
        const long long num = std::atoll(a.c_str()), den = std::atoll(b.c_str());
        if (den <= 0 || den > kTempoScale || num < kMinBpm * den || num > kMaxBpm * den) return false;
        long long g = num, h = den;
        while (h) {
            const long long t = g % h;
            g = h;
            h = t;
        }
        out.num = num / g;
        out.den = den / g;
        return true;
    }
    for (const char c : text)
        if (!std::isdigit(static_cast<unsigned char>(c)) && c != '.') return false;
    return tempoFromHost(std::strtod(text.c_str(), nullptr), out);
}

bool recordGrid(const TakeRecord& take, BarGrid& grid)
{
    Tempo tempo;
    Meter meter;
    int n = 0, d = 0;
    if (!parseTempoText(take.bpm, tempo)) return false;
    if (std::sscanf(take.meter.c_str(), "%d/%d", &n, &d) != 2 || !meterFromHost(n, d, meter)) return false;
    if (take.sampleRate < 8000 || take.sampleRate > 384000) return false;
    grid = BarGrid(tempo, meter, take.sampleRate);
    return true;
}

std::string takesToJson(const std::vector<TakeRecord>& takes)
{
    std::string out = "[";
    for (size_t i = 0; i < takes.size(); ++i) {
        const TakeRecord& t = takes[i];
        out += i ? ",\n {" : "\n {";
        out += "\"id\": " + jsonString(t.id) + ", \"prompt\": " + jsonString(t.prompt) +
               ", \"model\": " + jsonString(t.model) + ", \"key\": " + jsonString(t.key) +
               ", \"options\": " + jsonString(t.options) + ", \"bpm\": " + jsonString(t.bpm) +
               ", \"meter\": " + jsonString(t.meter) + ", \"start_bar\": " + std::to_string(t.startBar) +
               ", \"daw_bar\": " + std::to_string(t.startBar + 1) + ", \"bars\": " + std::to_string(t.bars) +
               ", \"sample_rate\": " + std::to_string(t.sampleRate) +
               ", \"start_sample\": " + std::to_string(t.startSample) +
               ", \"take\": " + std::to_string(t.takeNumber) + ", \"chosen\": " + std::to_string(t.chosen + 1) +
               ", \"accepted\": " + (t.accepted ? "true" : "false") + ", \"state\": " + jsonString(t.state);
        if (!t.chords.empty()) out += ", \"chords\": " + jsonString(t.chords);
        if (!t.guideFile.empty()) out += ", \"guide_file\": " + jsonString(t.guideFile);
        if (!t.errorCode.empty())
            out += ", \"error\": {\"code\": " + jsonString(t.errorCode) + ", \"message\": " +
                   jsonString(t.errorMessage) + "}";
        out += ", \"variations\": [";
        for (size_t v = 0; v < t.files.size(); ++v) {
            const TakeFile& f = t.files[v];
            out += v ? ", " : "";
            out += "{\"variation\": " + std::to_string(v + 1) + ", \"wav\": " + jsonString(f.wav) +
                   ", \"sidecar\": " + (f.sidecarMissing ? std::string("null") : jsonString(f.sidecar)) +
                   ", \"sidecar_missing\": " + (f.sidecarMissing ? "true" : "false") +
                   (f.barsKept > 0 ? ", \"partial\": true, \"bars_kept\": " + std::to_string(f.barsKept) : "") + "}";
        }
        out += "]}";
    }
    return out + (takes.empty() ? "]" : "\n]");
}

bool takesFromJson(const std::string& text, std::vector<TakeRecord>& out, std::string& error)
{
    out.clear();
    Json root;
    if (!parseJson(text, root, error)) return false;
    if (root.type != Json::Type::Array) {
        error = "takes must be a JSON list";
        return false;
    }
    for (const Json& item : root.items) {
        if (item.type != Json::Type::Object) continue;
        TakeRecord t;
        t.id = item.str("id");
        t.prompt = item.str("prompt");
        t.model = item.str("model");
        t.key = item.str("key").substr(0, 64);
        t.options = item.str("options").substr(0, 4096);
        t.chords = item.str("chords").substr(0, 4096);
        t.guideFile = item.str("guide_file").substr(0, 4096);
        t.bpm = item.str("bpm", "120");
        t.meter = item.str("meter", "4/4");
        const double startBar = item.num("start_bar", -1), bars = item.num("bars", 0),
                     rate = item.num("sample_rate", 0), startSample = item.num("start_sample", -1),
                     chosen = item.num("chosen", 1), take = item.num("take", 0);
        t.accepted = item.flag("accepted");
        t.state = item.str("state", "loaded");
        if (const Json* e = item.get("error")) {
            t.errorCode = e->str("code");
            t.errorMessage = e->str("message");
        }
        const Json* vars = item.get("variations");
        BarGrid grid;
        if (t.id.empty() || t.id.size() > 128 || !(startBar >= 0 && startBar <= 100000) || !(bars >= 1 && bars <= 256) ||
            !(rate >= 8000 && rate <= 384000) || !(startSample >= 0 && startSample < 9e15) || !vars ||
            vars->type != Json::Type::Array || vars->items.empty() || vars->items.size() > 16) {
            error += (error.empty() ? "" : ", ") + std::string("take ") + t.id.substr(0, 64) + " has fields out of range";
            continue;
        }
        t.startBar = static_cast<int32_t>(startBar);
        t.bars = static_cast<int32_t>(bars);
        t.sampleRate = static_cast<uint32_t>(rate);
        t.startSample = static_cast<int64_t>(startSample);
        t.takeNumber = static_cast<int32_t>(take);
        t.variations = static_cast<int32_t>(vars->items.size());
        t.chosen = chosen >= 1 && chosen <= t.variations ? static_cast<int32_t>(chosen) - 1 : 0;
        if (!recordGrid(t, grid)) {
            error += (error.empty() ? "" : ", ") + std::string("take ") + t.id.substr(0, 64) + " has a bad tempo or meter";
            continue;
        }
        for (const Json& v : vars->items) {
            TakeFile f;
            f.wav = v.str("wav");
            f.sidecar = v.str("sidecar");
            f.sidecarMissing = v.flag("sidecar_missing", f.sidecar.empty());
            const double kept = v.num("bars_kept", 0);
            f.barsKept = v.flag("partial") && kept >= 1 && kept < t.bars ? static_cast<int32_t>(kept) : 0;
            f.written = !f.wav.empty();
            t.files.push_back(f);
        }
        out.push_back(std::move(t));
    }
    return true;
}

}  // namespace stemd
