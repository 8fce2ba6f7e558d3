// A string as a JSON string literal, quotes included: the plugin's state and sidecars (take_store.cpp) and
// the link probe's event lines (link_probe.cpp) write strings this one way.
#ifndef STEMD_JSON_ESCAPE_HPP
#define STEMD_JSON_ESCAPE_HPP

#include <cstdio>
#include <string>

namespace stemd {

inline std::string json_escape(const std::string& text)
{
    std::string out = "\"";
    for (const unsigned char c : text) {
        const char* escape = c == '"' ? "\\\"" : c == '\\' ? "\\\\" : c == '\n' ? "\\n" : c == '\r' ? "\\r"
                           : c == '\t' ? "\\t" : nullptr;
        if (escape) {
            out += escape;
        } else if (c < 0x20) {
            char code[8];
            std::snprintf(code, sizeof code, "\\u%04x", c);
            out += code;
        } else {
            out += static_cast<char>(c);
        }
    }
    return out + "\"";
}

}  // namespace stemd

#endif
