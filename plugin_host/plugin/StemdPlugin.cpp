// The stemd plugin: DPF's Plugin subclass. run() is the audio callback; everything else here runs on
// the host's main/non-real-time threads.
#include "DistrhoPlugin.hpp"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>

#if defined(__linux__)
extern "C" __attribute__((weak)) void stemd_rt_probe(int entering);
#endif

START_NAMESPACE_DISTRHO

namespace {

enum Param : uint32_t {
    kBars = 0, kVariations, kStartBar, kGenerate, kVariation, kAudition, kCancel,
    kConnected, kBarsReceived, kParamCount
};

enum StateKey : uint32_t {
    kDaemon = 0, kToken, kPrompt, kModel, kTakesDir, kSlots, kTakes, kStatus, kStateCount
};

const char* const kStateKeys[kStateCount] = {
    "daemon", "token", "prompt", "model", "takes_dir", "slots", "takes", "status"};

std::string envOr(const char* name, const std::string& fallback)
{
    const char* value = std::getenv(name);
    return value && *value ? std::string(value) : fallback;
}

std::string defaultTakesDir()
{
    const std::string home = envOr("HOME", envOr("USERPROFILE", "."));
    return envOr("STEMD_TAKES_DIR", home + "/stemd-takes");
}

struct RtProbe {  // the real-time probe hook (tests/rt_probe.c); absent in a normal host
    RtProbe() noexcept
    {
#if defined(__linux__)
        if (stemd_rt_probe) stemd_rt_probe(1);
#endif
    }
    ~RtProbe()
    {
#if defined(__linux__)
        if (stemd_rt_probe) stemd_rt_probe(0);
#endif
    }
};

}  // namespace

class StemdPlugin : public Plugin
{
public:
    StemdPlugin()
        : Plugin(kParamCount, 0, kStateCount)
    {
        fStates[kDaemon] = envOr("STEMD_DAEMON", "127.0.0.1:9130");
        fStates[kTakesDir] = defaultTakesDir();
        fStates[kSlots] = "{}";
        fStates[kTakes] = "[]";
        fStates[kStatus] = "not connected";
    }

protected:
    const char* getLabel() const override { return "stemd"; }
    const char* getDescription() const override
    {
        return "Streams bar-locked takes from a stemd daemon and plays them at their bars.";
    }
    const char* getMaker() const override { return "stemd"; }
    const char* getHomePage() const override { return "https://github.com/stemd/stemd"; }
    const char* getLicense() const override { return "MIT"; }
    uint32_t getVersion() const override { return d_version(0, 1, 0); }
    int64_t getUniqueId() const override { return d_cconst('s', 't', 'm', 'd'); }

    void initAudioPort(bool input, uint32_t index, AudioPort& port) override
    {
        port.groupId = kPortGroupStereo;
        Plugin::initAudioPort(input, index, port);
    }

    void initParameter(uint32_t index, Parameter& p) override
    {
        p.hints = kParameterIsAutomatable;
        switch (index) {
        case kBars:
            setRange(p, "Bars", "bars", 1, 64, 4, kParameterIsInteger);
            break;
        case kVariations:
            setRange(p, "Variations", "variations", 1, 16, 1, kParameterIsInteger);
            break;
        case kStartBar:
            setRange(p, "Start bar (0 = next bar line)", "start_bar", 0, 9999, 0, kParameterIsInteger);
            break;
        case kGenerate:
            setRange(p, "Generate", "generate", 0, 1, 0, kParameterIsTrigger);
            break;
        case kVariation:
            setRange(p, "Variation", "variation", 1, 16, 1, kParameterIsInteger);
            break;
        case kAudition:
            setRange(p, "Audition", "audition", 0, 1, 0, kParameterIsTrigger);
            break;
        case kCancel:
            setRange(p, "Cancel", "cancel", 0, 1, 0, kParameterIsTrigger);
            break;
        case kConnected:
            setRange(p, "Connected", "connected", 0, 1, 0, kParameterIsOutput | kParameterIsBoolean);
            p.hints &= ~kParameterIsAutomatable;
            break;
        case kBarsReceived:
            setRange(p, "Bars received", "bars_received", 0, 1024, 0, kParameterIsOutput | kParameterIsInteger);
            p.hints &= ~kParameterIsAutomatable;
            break;
        }
    }

    void initState(uint32_t index, State& state) override
    {
        if (index >= kStateCount) return;
        state.key = kStateKeys[index];
        state.label = kStateKeys[index];
        state.defaultValue = fStates[index].c_str();
        state.hints = index == kStatus ? kStateIsHostReadable : kStateIsHostWritable;
    }

    float getParameterValue(uint32_t index) const override
    {
        return index < kParamCount ? fParams[index].load(std::memory_order_relaxed) : 0.0f;
    }

    void setParameterValue(uint32_t index, float value) override
    {
        if (index < kParamCount) fParams[index].store(value, std::memory_order_relaxed);
    }

    String getState(const char* key) const override
    {
        const std::lock_guard<std::mutex> lock(fStateMutex);
        for (uint32_t i = 0; i < kStateCount; ++i)
            if (std::strcmp(key, kStateKeys[i]) == 0) return String(fStates[i].c_str());
        return String();
    }

    void setState(const char* key, const char* value) override
    {
        const std::lock_guard<std::mutex> lock(fStateMutex);
        for (uint32_t i = 0; i < kStateCount; ++i)
            if (std::strcmp(key, kStateKeys[i]) == 0 && i != kStatus) fStates[i] = value ? value : "";
    }

    // ---- audio thread ------------------------------------------------------------------------------
    void run(const float**, float** outputs, uint32_t frames, const MidiEvent*, uint32_t) override
    {
        const RtProbe probe;
        std::memset(outputs[0], 0, sizeof(float) * frames);
        std::memset(outputs[1], 0, sizeof(float) * frames);
    }

private:
    static void setRange(Parameter& p, const char* name, const char* symbol, float min, float max, float def,
                         uint32_t hints)
    {
        p.name = name;
        p.symbol = symbol;
        p.ranges.min = min;
        p.ranges.max = max;
        p.ranges.def = def;
        p.hints |= hints;
    }

    std::atomic<float> fParams[kParamCount] = {{4}, {1}, {0}, {0}, {1}, {0}, {0}, {0}, {0}};
    mutable std::mutex fStateMutex;
    std::string fStates[kStateCount];

    DISTRHO_DECLARE_NON_COPYABLE_WITH_LEAK_DETECTOR(StemdPlugin)
};

Plugin* createPlugin()
{
    return new StemdPlugin();
}

END_NAMESPACE_DISTRHO
