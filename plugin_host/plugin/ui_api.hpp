// What the plugin's window may read and ask of the plugin (DPF direct access: the window holds a pointer
// to the plugin instance and calls these on its own thread, never the audio thread).
//
// The window keeps no take list of its own: each frame it asks for a UiSnapshot, a copy made under the
// plugin's mutex (which run() never takes), so what it draws is one consistent moment of the plugin's
// takes, connection and models. A take's audio is shared (TakeAudio is read-only to the window: bars are
// published by flags, as run() reads them).
#ifndef STEMD_UI_API_HPP
#define STEMD_UI_API_HPP

#include "take_store.hpp"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace stemd {

struct UiModel {
    std::string name, family, license;
    bool commercial = false;
    bool loaded = false;
};

struct UiTake {
    uint64_t serial = 0;        // 0 when it has no audio (refused before any)
    std::string id, prompt, model, bpm, meter, state, errorCode, errorMessage, folder;
    int32_t startBar = 0;       // 0-based
    int32_t bars = 0, variations = 1, chosen = 0, queueAhead = -1, barsReceived = 0;
    int64_t startSample = 0;
    uint32_t sampleRate = 48000;
    bool accepted = false;
    std::string guide;          // the guide it was made with, in a few words ("chords Am | F", "MIDI guide,
                                // 12 notes"); "" for none
    std::vector<std::string> wavs;  // per variation ("" until written)
    std::shared_ptr<const TakeAudio> audio;
};

// The guide every request goes with (the `guide` state: a part recorded from the plugin's MIDI input), and
// the recorder. A recorded guide wins over the `chords` state; without either, requests have no guide.
struct UiGuide {
    enum class Recorder { Idle, Armed, Recording };
    int32_t bars = 0;           // the recorded guide: 0 when none
    int32_t notes = 0;
    int32_t fromBar = 0;        // where it was played (0-based bar), at tempo/meter
    std::string tempo, meter;
    std::string file;           // its SMF in the takes folder ("" until written)
    Recorder recorder = Recorder::Idle;
    int32_t recordBars = 4;     // the guide_bars parameter: what the next recording takes
    int32_t recordFromBar = 0;  // while recording: its first bar (0-based) and the bars done
    int32_t recordDone = 0;
    std::string message;        // the last recording's outcome, one line ("" before any)
};

struct UiSnapshot {
    std::string connection;     // one line: stopped/connecting/connected/unreachable/dropped (host:port): why
    bool connected = false;
    std::string lastError;
    std::vector<UiModel> models;
    std::vector<UiTake> takes;  // newest first
    uint64_t selected = 0;      // serial of the selected take
    std::string daemon, token, prompt, model, key, options, takesDir;
    std::string chords;         // the `chords` state
    UiGuide guide;
};

struct UiPlayhead {
    bool playing = false;       // the host's transport
    int64_t timeline = 0;       // the host's timeline sample (bar 1 = 0) at the last block
    uint64_t audition = 0;      // the take auditioning while the host is stopped (serial; 0: none)
    int64_t auditionAt = 0;     // and how far into it, in frames
};

// RecordGuide arms the recorder (guide_bars bars from the next bar line while the host plays); while it
// is armed or recording, it stops it. ClearGuide forgets the recorded guide.
enum class UiAction { Next, Previous, Accept, Reroll, Extend, Cancel, Audition, Delete, Reveal, RecordGuide, ClearGuide };

class UiApi {
public:
    virtual ~UiApi() = default;
    virtual void uiSnapshot(UiSnapshot& out) const = 0;
    virtual UiPlayhead uiPlayhead() const noexcept = 0;
    virtual void uiSelect(uint64_t serial) = 0;
    // queued for the plugin's worker thread; acts on the take `serial` (0: the selected one)
    virtual void uiAction(UiAction action, uint64_t serial) = 0;
    // a request with these settings (also kept in the plugin's state); made on the plugin's worker thread.
    // startBar: 0 = the next bar line, N = the DAW's bar N. The states are set here, at once: one set through
    // the host (UI::setState) may reach the plugin only after the request is made (LV2 passes it through run())
    virtual void uiGenerate(const std::string& prompt, const std::string& model, const std::string& key,
                            const std::string& options, const std::string& chords, int32_t bars, int32_t variations,
                            int32_t startBar) = 0;
};

// Opens `folder` in the file manager (xdg-open on Linux) from a detached thread; returns at once.
void revealFolder(const std::string& folder);

// The native window `window` takes the keyboard (X11's input focus) while a text box in it is focused;
// returns who held it before (to give it back to), 0 when nothing changed. No-ops where there is no X11.
uintptr_t takeKeyboard(uintptr_t window);
// Gives the keyboard back to `previous` if `window` still holds it.
void giveBackKeyboard(uintptr_t window, uintptr_t previous);

}  // namespace stemd

#endif
