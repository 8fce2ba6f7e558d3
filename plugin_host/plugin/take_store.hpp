// Takes in memory and on disk, for the stemd plugin.
//
// TakeAudio is what run() reads: a take's geometry (where its bars start on the timeline) and one
// buffer per variation, allocated whole when the take is made (off the audio thread), filled bar by
// bar by the network thread, each bar published by a flag the audio thread reads (acquire): a bar not
// received yet plays silence.
//
// TakeRecord is what the rest of the plugin knows about a take (prompt, model, tempo, files, state), the
// plugin's `takes` state as JSON (written by the small writer here, read back by a bounded parser), and
// the files: each finished variation as WAV float32 plus its JSON sidecar, named as stemd.takes names
// them (<prompt words>_bar<DAW bar>_take<n>[_v<variation>]), written through a partial file and renamed.
//
// Nothing in this file is called from the audio thread except TakeAudio's const readers.
#ifndef STEMD_TAKE_STORE_HPP
#define STEMD_TAKE_STORE_HPP

#include "transport.hpp"

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace stemd {

// ---- JSON (bounded) --------------------------------------------------------------------------------
struct Json {
    enum class Type { Null, Bool, Number, String, Array, Object };
    Type type = Type::Null;
    bool boolean = false;
    double number = 0;
    std::string text;
    std::vector<Json> items;
    std::vector<std::pair<std::string, Json>> members;

    const Json* get(const char* key) const noexcept;  // an object's member, or nullptr
    std::string str(const char* key, const std::string& fallback = "") const;
    double num(const char* key, double fallback = 0) const noexcept;
    bool flag(const char* key, bool fallback = false) const noexcept;
};

constexpr size_t kMaxJsonBytes = 16u << 20;
constexpr int kMaxJsonDepth = 32;

// Parses `text` (at most kMaxJsonBytes, nesting at most kMaxJsonDepth); false with `error` on anything
// that is not one whole JSON value.
bool parseJson(const std::string& text, Json& out, std::string& error);
// `value` as a JSON string literal, quotes included.
std::string jsonString(const std::string& value);

// ---- names and files ---------------------------------------------------------------------------------
// As stemd.takes.slug / take_prefix / take_name (no stem): 'Dusty lo-fi drums!' -> 'dusty-lo-fi-drums'.
std::string slug(const std::string& text);
std::string takePrefix(const std::string& prompt, int32_t startBar);
std::string takeName(const std::string& prompt, int32_t startBar, int32_t take, int32_t variation, bool named);
// 1 + the highest take number in `folder` for names starting with `prefix` + "_take".
int32_t nextTakeNumber(const std::string& folder, const std::string& prefix);

// `data` into `path` through `path.<random>.partial`, synced, then renamed; false with `error`. With
// `replace` false an existing `path` is left as it is (false, `error` "exists: PATH").
bool atomicWrite(const std::string& path, const std::string& data, std::string& error, bool replace = true);
// A RIFF/WAVE float32 file of interleaved `frames` x `channels` samples.
std::string wavFloat32(const float* interleaved, int64_t frames, int32_t channels, uint32_t sampleRate);
// Reads a WAV file (float32, or PCM 16/24/32; mono or stereo) as stereo float32 into `out`
// (frames x 2); at most `maxFrames` frames are read. false with `error`.
bool readWav(const std::string& path, int64_t maxFrames, std::vector<float>& out, uint32_t& sampleRate,
             std::string& error);
// The daemon's sidecar text with `delivery` (a JSON object's text) added under the key "delivery", the
// daemon's bytes kept as they came; "" when `daemonJson` is not a JSON object (or already has one).
std::string sidecarWithDelivery(const std::string& daemonJson, const std::string& delivery);
// The daemon's part of a sidecar sidecarWithDelivery wrote (its text up to the delivery key, closed
// again), and that delivery's "received" in `received` ("" if none); "" when the text is not such a
// sidecar or the daemon's part is empty (a sidecar written with no daemon sidecar).
std::string daemonSidecarOf(const std::string& sidecar, std::string& received);

// `in` (frames x 2 interleaved, at rateIn) at rateOut, `outFrames` frames long (frame j is the input's
// time j / rateOut): a windowed-sinc interpolator (Blackman window, 32 zero crossings a side, cut off at the
// lower rate's Nyquist). Off the audio thread: a take made at another rate than the host's.
std::vector<float> resampleStereo(const float* in, int64_t frames, uint32_t rateIn, uint32_t rateOut, int64_t outFrames);

// ---- what run() reads ----------------------------------------------------------------------------------
class TakeAudio {
public:
    // Allocates every variation's buffer (silence); bar b covers [barOffset(b), barOffset(b + 1)).
    TakeAudio(uint64_t serial, int64_t startSample, const BarGrid& grid, int32_t startBar, int32_t bars,
              int32_t variations);

    uint64_t serial() const noexcept { return fSerial; }   // newer takes win where takes overlap
    int64_t startSample() const noexcept { return fStart; }
    int64_t frames() const noexcept { return fOffsets.back(); }
    uint32_t sampleRate() const noexcept { return fRate; }
    int32_t bars() const noexcept { return static_cast<int32_t>(fOffsets.size()) - 1; }
    int32_t variations() const noexcept { return static_cast<int32_t>(fAudio.size()); }
    int64_t barOffset(int32_t bar) const noexcept { return fOffsets[static_cast<size_t>(bar)]; }
    int64_t barFrames(int32_t bar) const noexcept { return barOffset(bar + 1) - barOffset(bar); }

    // audio thread: the chosen variation's frame at `offset` from the take's start (silence if its bar
    // has not arrived, the take is switched off, or `offset` is outside it)
    void frameAt(int64_t offset, float& left, float& right) const noexcept;
    int32_t barAtOffset(int64_t offset) const noexcept;

    // network / loader thread: one bar of one variation (frames x 2 interleaved), then published
    void fillBar(int32_t variation, int32_t bar, const float* interleaved, int64_t frames) noexcept;
    bool barReady(int32_t variation, int32_t bar) const noexcept;
    bool complete(int32_t variation) const noexcept;  // every bar of `variation` has arrived
    const float* variationData(int32_t variation) const noexcept { return fAudio[static_cast<size_t>(variation)].get(); }
    int32_t barsReceived() const noexcept { return fReceived.load(std::memory_order_relaxed); }

    std::atomic<int32_t> chosen{0};
    std::atomic<bool> enabled{true};

private:
    uint64_t fSerial;
    int64_t fStart;
    uint32_t fRate;
    std::vector<int64_t> fOffsets;
    std::vector<std::unique_ptr<float[]>> fAudio;
    std::unique_ptr<std::atomic<uint8_t>[]> fReady;
    std::atomic<int32_t> fReceived{0};
};

// ---- what the plugin knows about a take ---------------------------------------------------------------
struct TakeFile {
    std::string wav;            // absolute path ("" until written)
    std::string sidecar;        // absolute path of its JSON
    std::string daemonSidecar;  // the daemon's JSON for this variation, as it came ("" if none came)
    bool sidecarMissing = true;
    int32_t barsKept = 0;       // a take cut off mid-stream: the bars its WAV holds (0: the whole take)
    bool written = false;       // on disk (or being written)
    bool rewrite = false;       // its sidecar is to be written again (the take was accepted)
};

struct TakeRecord {
    std::string id;
    std::string prompt;
    std::string model;
    std::string key;           // the request's key, and its family keys (a JSON object): what a re-roll repeats
    std::string options;
    // the guide it was made with: chord symbols, or a MIDI guide (its SMF in memory, and once written the
    // path of its copy beside the take's WAV, NAME.mid); what a re-roll repeats
    std::string chords;
    std::shared_ptr<const std::vector<uint8_t>> guide;
    std::string guideFile;
    std::string bpm = "120";   // exact, as sent: "num/den" or "num"
    std::string meter = "4/4";
    int32_t startBar = 0;      // 0-based (DAW bar 1 = 0)
    int32_t bars = 4;
    int32_t variations = 1;
    uint32_t sampleRate = 48000;
    int64_t startSample = 0;
    int32_t chosen = 0;        // 0-based
    bool accepted = false;
    int32_t takeNumber = 0;
    // requested, accepted, queued, streaming, cancelling, done, cancelled, failed, interrupted (saved while it
    // streamed), missing (its files are gone)
    std::string state = "requested";
    std::string errorCode;
    std::string errorMessage;
    int32_t queueAhead = -1;   // requests ahead of it in the daemon's queue (/stemd/queued; not saved)
    std::vector<TakeFile> files;
    std::shared_ptr<TakeAudio> audio;
};

// The `takes` state: a JSON list of records.
std::string takesToJson(const std::vector<TakeRecord>& takes);
// Parses the `takes` state; records whose fields are out of range are skipped (their id in `error`).
bool takesFromJson(const std::string& text, std::vector<TakeRecord>& out, std::string& error);
// The grid a record's bars lie on; false when its tempo or meter text is not one stemd accepts.
bool recordGrid(const TakeRecord& take, BarGrid& grid);
// Parses "num/den", "num" or a decimal like "137.5" into an exact tempo.
bool parseTempoText(const std::string& text, Tempo& out);

}  // namespace stemd

#endif
