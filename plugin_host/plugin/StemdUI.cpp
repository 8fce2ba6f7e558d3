// The stemd plugin's window (DPF's DGL with NanoVG).
//
// What it shows comes from the plugin itself, read each frame through DPF's direct access
// (ui_api.hpp: a snapshot made under the plugin's mutex, which the audio thread never takes): the window
// keeps no take list of its own, only what the producer is typing and where the list is scrolled.
// What it does goes back the same way: the request's settings into the plugin's state and parameters
// (so the host saves them), and every action to the plugin's worker thread.
//
// Keys: only a text box with the focus takes keys (the prompt, key, chords, daemon and token boxes); otherwise
// every key handler returns false, so the host keeps its transport and shortcut keys.
#include "DistrhoPlugin.hpp"
#include "DistrhoUI.hpp"
#include "OpenGL-include.hpp"

#include "ui_api.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

START_NAMESPACE_DISTRHO

namespace {

constexpr uint kWidth = 980, kHeight = 640;  // logical pixels at scale 1
constexpr float kRow = 44.0f;                // one take in the list

enum Param : uint32_t { kBars = 0, kVariations, kStartBar, kGenerate, kVariation, kAudition, kCancel, kGuideBars = 10 };

enum Hit : int {
    kNone = 0, kPromptBox, kKeyBox, kDaemonBox, kTokenBox, kApplyDaemon, kModelMenu, kBarsDown, kBarsUp,
    kVarsDown, kVarsUp, kStartDown, kStartUp, kGenerateButton, kCancelButton, kPrev, kNext, kAuditionButton,
    kAcceptButton, kRerollButton, kExtendButton, kDeleteButton, kRevealButton, kOptionDown, kOptionUp, kChordsBox,
    kGuideBarsDown, kGuideBarsUp, kRecordButton, kClearButton, kModelRow = 1000,
    kTakeRow = 100000
};

struct Rect {
    float x, y, w, h;
    bool contains(float px, float py) const { return px >= x && px < x + w && py >= y && py < y + h; }
};

struct Option {  // a family's own request key
    const char* key;
    float initial, step, lo, hi;
    bool integer;
};

const Option kSteps{"steps", 8, 1, 1, 200, true};
const Option kGuidance{"guidance", 3, 0.5f, 0, 20, false};
const Option kStrength{"strength", 0.5f, 0.05f, 0, 1, false};
const Option kTemperature{"temperature", 1, 0.05f, 0.05f, 5, false};
const Option kGuideStrength{"guide_strength", 0.5f, 0.05f, 0, 1, false};

// the keys only some families take (docs/protocol.md, stemd/families.py)
std::vector<const Option*> familyOptions(const std::string& family)
{
    if (family == "musicgen" || family == "musicgen-melody") return {&kTemperature, &kGuidance};
    if (family == "stable-audio-3") return {&kSteps, &kGuidance, &kStrength};
    if (family == "ace-step") return {&kSteps, &kGuidance, &kGuideStrength};
    return {};
}

// the families that follow a guide (stemd/families.py: those that take `guide` and `chords`); the daemon
// refuses a guide for any other
bool followsGuide(const std::string& family)
{
    return family == "musicgen-melody" || family == "stable-audio-3" || family == "ace-step";
}

// how many bars chord text spans: a bar per '|', up to its last bar with a chord (stemd/guides/chords.py)
int chordBars(const std::string& text)
{
    int bar = 0, last = 0;
    bool chord = false;
    for (const char c : text) {
        if (c == '|') ++bar, chord = false;
        else if (!chord && c != ' ' && c != '\t') chord = true, last = bar + 1;
    }
    return last;
}

struct TextBox {
    std::string text;
    size_t caret = 0;
    size_t limit = 2000;

    void insert(const std::string& s)
    {
        if (text.size() + s.size() > limit * 4) return;
        text.insert(caret, s);
        caret += s.size();
    }
    void backspace()
    {
        if (caret == 0) return;
        size_t start = caret - 1;
        while (start > 0 && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
        text.erase(start, caret - start);
        caret = start;
    }
    void del()
    {
        if (caret >= text.size()) return;
        size_t end = caret + 1;
        while (end < text.size() && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) ++end;
        text.erase(caret, end - caret);
    }
    void left()
    {
        while (caret > 0) {
            --caret;
            if ((static_cast<unsigned char>(text[caret]) & 0xC0) != 0x80) break;
        }
    }
    void right()
    {
        while (caret < text.size()) {
            ++caret;
            if (caret >= text.size() || (static_cast<unsigned char>(text[caret]) & 0xC0) != 0x80) break;
        }
    }
};

std::string stateLabel(const stemd::UiTake& t)
{
    if (t.state == "requested") return "sent";
    if (t.state == "accepted") return "queued";
    if (t.state == "queued") return t.queueAhead > 0 ? "queued, " + std::to_string(t.queueAhead) + " ahead" : "queued";
    if (t.state == "streaming") return "generating";
    if (t.state == "cancelling") return "cancelling";
    if (t.state == "done") return "ready";
    return t.state;  // cancelled, failed, interrupted, missing
}

std::string fmt(float value, bool integer)
{
    char buf[32];
    std::snprintf(buf, sizeof buf, integer ? "%.0f" : "%.2f", static_cast<double>(value));
    return buf;
}

}  // namespace

class StemdUI : public UI
{
public:
    StemdUI()
        : UI(kWidth, kHeight)
    {
        loadSharedResources();
        const double k = getScaleFactor();
        setGeometryConstraints(static_cast<uint>(640 * k), static_cast<uint>(460 * k), false, false);
        if (k != 1.0) setSize(static_cast<uint>(kWidth * k), static_cast<uint>(kHeight * k));
        if (void* instance = getPluginInstancePointer())
            fApi = dynamic_cast<stemd::UiApi*>(static_cast<Plugin*>(instance));
        fPrompt.limit = 2000;
        fKey.limit = 64;
        fDaemon.limit = 300;
        fToken.limit = 256;
        fChords.limit = 1024;  // characters, up to 4 bytes each: the plugin sends at most 4096 bytes
        if (const char* log = std::getenv("STEMD_UI_LOG")) fLogPath = log;
        if (const char* frames = std::getenv("STEMD_UI_FRAMES")) fFramesPath = frames;
        if (fApi) {
            fApi->uiSnapshot(fSnap);
            fPrompt.text = fSnap.prompt;
            fPrompt.caret = fPrompt.text.size();
            fKey.text = fSnap.key;
            fKey.caret = fKey.text.size();
            fDaemon.text = fSnap.daemon;
            fToken.text = fSnap.token;
            fChords.text = fChordsSent = fSnap.chords;
            fChords.caret = fChords.text.size();
            fModel = fSnap.model;
            readOptions(fSnap.options);
        }
    }

protected:
    // ---- from the host ---------------------------------------------------------------------------------
    void parameterChanged(uint32_t index, float value) override
    {
        const int v = static_cast<int>(value + 0.5f);
        if (index == kBars) fBars = std::clamp(v, 1, 64);
        else if (index == kVariations) fVariations = std::clamp(v, 1, 16);
        else if (index == kStartBar) fStartBar = std::clamp(v, 0, 9999);
        else if (index == kGuideBars) fGuideBars = std::clamp(v, 1, 64);
        repaint();
    }

    void stateChanged(const char* key, const char* value) override
    {
        const std::string text = value ? value : "";
        if (std::strcmp(key, "prompt") == 0 && fFocus != kPromptBox) fPrompt.text = text, fPrompt.caret = text.size();
        else if (std::strcmp(key, "model") == 0) fModel = text;
        else if (std::strcmp(key, "key") == 0 && fFocus != kKeyBox) fKey.text = text, fKey.caret = text.size();
        else if (std::strcmp(key, "daemon") == 0 && fFocus != kDaemonBox) fDaemon.text = text, fDaemon.caret = text.size();
        else if (std::strcmp(key, "token") == 0 && fFocus != kTokenBox) fToken.text = text, fToken.caret = text.size();
        else if (std::strcmp(key, "options") == 0) readOptions(text);
        else if (std::strcmp(key, "chords") == 0 && fFocus != kChordsBox)
            fChords.text = fChordsSent = text, fChords.caret = text.size();
        repaint();
    }

    void uiIdle() override
    {
        if (fFrameStart.time_since_epoch().count() != 0 && !fFramesPath.empty()) {
            // a frame was drawn since the last idle: from its start to here it was built, flushed and swapped
            const double frame = std::chrono::duration<double, std::milli>(Clock::now() - fFrameStart).count();
            if (FILE* f = std::fopen(fFramesPath.c_str(), "a")) {
                std::fprintf(f, "%.3f %.3f %zu %.0f\n", frame, fBuildMs, fSnap.takes.size(), static_cast<double>(fScroll));
                std::fclose(f);
            }
        }
        fFrameStart = Clock::time_point();
        // redraw only when what the window shows has changed (software GL makes every frame count)
        if (fApi && changed()) repaint();
    }

    // what the window shows of the plugin, in a few bytes: takes, their states and bars, the connection,
    // the recorded guide and the recorder, the playhead while the host plays
    bool changed()
    {
        fApi->uiSnapshot(fProbe);
        std::string& sig = fSignature[1];
        sig.clear();
        sig += fProbe.connection + '\n' + fProbe.lastError + '\n' + std::to_string(fProbe.models.size()) + ' ' +
               std::to_string(fProbe.selected);
        const stemd::UiGuide& g = fProbe.guide;
        sig += "|guide" + std::to_string(g.bars) + ' ' + std::to_string(g.notes) + ' ' + std::to_string(g.fromBar) + ' ' +
               g.tempo + ' ' + g.meter + ' ' + g.file + ' ' + std::to_string(static_cast<int>(g.recorder)) + ' ' +
               std::to_string(g.recordBars) + ' ' + std::to_string(g.recordFromBar) + ' ' +
               std::to_string(g.recordDone) + ' ' + g.message + '\n' + fProbe.chords;
        for (const auto& t : fProbe.takes) {
            sig += '|';
            sig += std::to_string(t.serial) + t.state + std::to_string(t.barsReceived) + '.' + std::to_string(t.chosen) +
                   (t.accepted ? "a" : "") + std::to_string(t.queueAhead) + t.errorCode;
        }
        const stemd::UiPlayhead p = fApi->uiPlayhead();
        if (p.playing) sig += "|play" + std::to_string(p.timeline / 1600);  // about 30 positions a second
        if (p.audition != 0) sig += "|audition" + std::to_string(p.auditionAt / 1600);
        if (sig == fSignature[0]) return false;
        std::swap(fSignature[0], fSignature[1]);
        return true;
    }

    // ---- drawing -----------------------------------------------------------------------------------------
    void onNanoDisplay() override
    {
        const Clock::time_point start = Clock::now();
        if (fApi) fApi->uiSnapshot(fSnap);  // this frame's view of the plugin
        fHits.clear();
        const float k = static_cast<float>(getScaleFactor());
        fK = k > 0 ? k : 1.0f;
        const float W = getWidth() / fK, H = getHeight() / fK;
        scale(fK, fK);
        fontFace(NANOVG_DEJAVU_SANS_TTF);

        solid(0, 0, W, H, 30, 32, 36);
        drawStatus(W);
        const float left = std::min(360.0f, W * 0.42f);
        drawRequest(12, 72, left - 18, H - 84);
        const float listH = std::max(120.0f, (H - 84) * 0.5f);
        drawTakes(left + 6, 72, W - left - 18, listH);
        drawSelected(left + 6, 72 + listH + 8, W - left - 18, H - 84 - listH - 8);
        if (fMenuOpen) drawModelMenu(12 + 70, fMenuY, left - 18 - 70);
        writeLog();
        fFrameStart = start;
        fBuildMs = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
    }

    void drawStatus(float W)
    {
        const bool ok = fSnap.connected;
        beginPath();
        circle(16, 16, 6);
        fillColor(ok ? Color(80, 200, 120) : Color(220, 90, 70));
        fill();
        fontSize(14);
        textAlign(ALIGN_LEFT | ALIGN_MIDDLE);
        fillColor(220, 220, 220);
        std::string line = "connected to " + fSnap.daemon + " · " + std::to_string(fSnap.models.size()) +
                           (fSnap.models.size() == 1 ? " model" : " models");
        if (!ok) line = "No daemon at " + fSnap.daemon + " (" + fSnap.connection + "). Start one: stemd serve --model <name>";
        label(28, 16, line, W - 40);
        if (!fSnap.lastError.empty()) {
            fillColor(230, 170, 90);
            fontSize(12);
            label(28, 33, "last error: " + fSnap.lastError, W - 40);
        }
        fontSize(13);
        fillColor(170, 170, 170);
        label(12, 56, "Daemon", 60);
        textField(kDaemonBox, fDaemon, 70, 44, 200, 24, false);
        fillColor(170, 170, 170);
        label(282, 56, "Token", 50);
        textField(kTokenBox, fToken, 330, 44, 160, 24, true);
        button(kApplyDaemon, 500, 44, 90, 24, "Connect", true);
    }

    // The request panel, top to bottom: prompt, model, bars, variations, start, key, the family's own keys, the
    // guide (chords, the recorded part, the recorder), Generate. Rows are 30 px apart where they fit; a short
    // window packs them closer (down to 20) so that every control stays inside it.
    void drawRequest(float x, float y, float w, float h)
    {
        const stemd::UiModel* model = currentModel();
        const auto options = familyOptions(model ? model->family : "");
        const std::string warning = fWarning = guideWarning(model);
        const float rows = 9.0f + static_cast<float>(options.size());  // prompt box .. Generate, in row pitches
        const float lines = (warning.empty() ? 2.0f : 3.0f);              // guide, recorder, warning
        fRowH = 30, fCtlH = 24;
        float gap = 12, line = 16, licence = model ? 34.0f : 6.0f;
        if (18 + gap + rows * fRowH + licence + lines * line + 6 > h) {  // short: pack everything closer
            gap = 4, line = 14, licence = model ? 16.0f : 4.0f;
            fRowH = std::clamp(std::floor((h - 18 - gap - licence - lines * line - 4) / rows), 20.0f, 30.0f);
            fCtlH = fRowH - 4;
        }
        fontSize(13);
        fillColor(170, 170, 170);
        label(x, y + 8, "Prompt (Enter generates)", w);
        textField(kPromptBox, fPrompt, x, y + 18, w, fRowH, false);
        float cy = y + 18 + fRowH + gap;

        fillColor(170, 170, 170);
        label(x, cy + fCtlH / 2, "Model", 60);
        button(kModelMenu, x + 70, cy, w - 70, fCtlH, (fModel.empty() ? std::string("daemon's default") : fModel) + "  v",
               true);
        fMenuY = cy + fCtlH + 4;
        cy += fRowH;
        if (model) {
            fontSize(12);
            fillColor(170, 170, 170);
            const std::string about = model->family + " · licence: " + model->license;
            if (licence < 20) {  // packed: one line, from the panel's edge
                float ax = x;
                if (!model->commercial) {
                    fillColor(240, 110, 90);
                    label(x, cy + 8, "NON-COMMERCIAL", w);
                    Rectangle<float> bounds;
                    ax += textBounds(0, 0, "NON-COMMERCIAL · ", nullptr, bounds);
                }
                fillColor(170, 170, 170);
                label(ax, cy + 8, about + (model->commercial ? " · commercial use allowed" : ""), x + w - ax);
            } else {
                label(x + 70, cy + 8, about, w - 70);
                fillColor(model->commercial ? Color(120, 200, 140) : Color(240, 110, 90));
                label(x + 70, cy + 24, model->commercial ? "commercial use allowed"
                                                         : "NON-COMMERCIAL: takes may not be released commercially", w - 70);
            }
        }
        cy += licence;
        fontSize(13);
        cy = stepper(x, cy, w, "Bars", std::to_string(fBars), kBarsDown, kBarsUp);
        cy = stepper(x, cy, w, "Variations", std::to_string(fVariations), kVarsDown, kVarsUp);
        cy = stepper(x, cy, w, "Start", fStartBar == 0 ? std::string("next bar") : "bar " + std::to_string(fStartBar),
                     kStartDown, kStartUp);
        fillColor(170, 170, 170);
        label(x, cy + fCtlH / 2, "Key", 60);
        textField(kKeyBox, fKey, x + 90, cy, w - 90, fCtlH, false);
        cy += fRowH;
        for (size_t i = 0; i < options.size(); ++i) {
            const Option& o = *options[i];
            const float v = optionValue(o.key);
            cy = stepper(x, cy, w, o.key, v < 0 ? std::string("model's") : fmt(v, o.integer),
                         kOptionDown + static_cast<int>(i) * 2 + 100, kOptionUp + static_cast<int>(i) * 2 + 100);
        }
        cy = drawGuide(x, cy, w, line, warning);
        cy += gap > 10 ? 6 : 2;
        button(kGenerateButton, x, cy, w * 0.6f - 4, fRowH, "Generate", fApi != nullptr);
        button(kCancelButton, x + w * 0.6f, cy, w * 0.4f, fRowH, "Cancel", true);
        fGenerateAt = Rect{x, cy, w * 0.6f - 4, fRowH};
    }

    // The guide the next request goes with: the chords box, a line saying what is sent, the recorder's row
    // (bars to record, Record/Stop, Clear) and its state, and a warning when the model cannot follow a guide.
    float drawGuide(float x, float cy, float w, float line, const std::string& warning)
    {
        const stemd::UiGuide& g = fSnap.guide;
        const bool recorded = g.bars > 0;
        fontSize(13);
        fillColor(170, 170, 170);
        label(x, cy + fCtlH / 2, "Chords", 88);
        fChordsAt = Rect{x + 90, cy, w - 90, fCtlH};
        textField(kChordsBox, fChords, x + 90, cy, w - 90, fCtlH, false,
                  recorded ? "(a recorded guide wins)" : "Am7 | F | C/E . G | G7sus4", recorded);
        cy += fRowH;

        fontSize(12);
        fGuideLine = guideLine(w);
        fillColor(recorded ? Color(120, 200, 140) : Color(170, 170, 170));
        label(x, cy + line / 2, fGuideLine, w);
        cy += line;

        fillColor(170, 170, 170);
        fontSize(13);
        const float lw = std::min(90.0f, w * 0.29f), cw = w - lw;
        label(x, cy + fCtlH / 2, "Guide bars", lw - 2);
        const float sw = cw * 0.45f, rw = cw * 0.3f - 4, clw = cw - sw - rw - 8;
        button(kGuideBarsDown, x + lw, cy, 26, fCtlH, "-", true);
        fillColor(230, 230, 230);
        textAlign(ALIGN_CENTER | ALIGN_MIDDLE);
        text(x + lw + sw / 2, cy + fCtlH / 2, std::to_string(fGuideBars).c_str(), nullptr);
        textAlign(ALIGN_LEFT | ALIGN_MIDDLE);
        button(kGuideBarsUp, x + lw + sw - 26, cy, 26, fCtlH, "+", true);
        const bool idle = g.recorder == stemd::UiGuide::Recorder::Idle;
        fRecordLabel = idle ? "Record" : "Stop";
        fRecordAt = Rect{x + lw + sw + 4, cy, rw, fCtlH};
        button(kRecordButton, fRecordAt.x, cy, rw, fCtlH, fRecordLabel, fApi != nullptr);
        fClearEnabled = recorded && fApi != nullptr;
        button(kClearButton, x + w - clw, cy, clw, fCtlH, "Clear", fClearEnabled);
        cy += fRowH;

        fontSize(11);
        fRecorderLine = recorderLine(w);
        fillColor(g.recorder == stemd::UiGuide::Recorder::Recording ? Color(240, 110, 90)
                  : idle                                            ? Color(150, 150, 160)
                                                                    : Color(250, 220, 80));
        label(x, cy + line / 2, fRecorderLine, w);
        cy += line;
        if (!warning.empty()) {
            fillColor(240, 160, 60);
            label(x, cy + line / 2, fit({warning, warning.substr(0, warning.find(':'))}, w), w);
            cy += line;
        }
        return cy;
    }

    // what the requests go with now, in one line
    std::string guideLine(float w)
    {
        const stemd::UiGuide& g = fSnap.guide;
        if (g.bars > 0) {
            const std::string head = "MIDI guide: " + std::to_string(g.notes) + " notes, " + std::to_string(g.bars) + " bars";
            const std::string at = " at bar " + std::to_string(g.fromBar + 1);
            return fit({head + " played" + at + " (" + g.tempo + " BPM " + g.meter + ")", head + at, head}, w);
        }
        const int bars = chordBars(fChords.text);
        if (bars > 0) return "guide: the chords, " + std::to_string(bars) + (bars == 1 ? " bar" : " bars");
        return "no guide";
    }

    // the recorder: armed, recording, or the last recording's outcome
    std::string recorderLine(float w)
    {
        const stemd::UiGuide& g = fSnap.guide;
        switch (g.recorder) {
        case stemd::UiGuide::Recorder::Armed:
            return fit({"armed (" + std::to_string(g.recordBars) + " bars): starts at the next bar line while the host plays",
                        "armed: starts at the next bar line while the host plays", "armed: starts at the next bar line",
                        "armed"}, w);
        case stemd::UiGuide::Recorder::Recording:
            return fit({"recording bar " + std::to_string(std::min(g.recordDone + 1, g.recordBars)) + " of " +
                        std::to_string(g.recordBars) + " (from bar " + std::to_string(g.recordFromBar + 1) + ")",
                        "recording bar " + std::to_string(std::min(g.recordDone + 1, g.recordBars)) + " of " +
                        std::to_string(g.recordBars)}, w);
        case stemd::UiGuide::Recorder::Idle: break;
        }
        return g.message;
    }

    // why the daemon will refuse this guide, told before it does ("" when it will not)
    std::string guideWarning(const stemd::UiModel* model) const
    {
        const bool recorded = fSnap.guide.bars > 0;
        const int chords = recorded ? 0 : chordBars(fChords.text);
        if (!recorded && chords == 0) return "";
        if (model && !followsGuide(model->family)) return model->family + " cannot follow a guide: the daemon will refuse it";
        if (chords > fBars)
            return "the chords have " + std::to_string(chords) + " bars, the take " + std::to_string(fBars) +
                   ": the daemon will refuse them";
        return "";
    }

    // the first of `candidates` that fits in `w` at the current font (the last one, cut, when none does)
    std::string fit(const std::vector<std::string>& candidates, float w)
    {
        Rectangle<float> bounds;
        for (const auto& c : candidates)
            if (textBounds(0, 0, c.c_str(), nullptr, bounds) <= w) return c;
        return candidates.back();
    }

    float stepper(float x, float y, float w, const std::string& name, const std::string& value, int down, int up)
    {
        fillColor(170, 170, 170);
        label(x, y + fCtlH / 2, name, 88);
        button(down, x + 90, y, 26, fCtlH, "-", true);
        fillColor(230, 230, 230);
        textAlign(ALIGN_CENTER | ALIGN_MIDDLE);
        text(x + 90 + 26 + (w - 90 - 52) / 2, y + fCtlH / 2, value.c_str(), nullptr);
        textAlign(ALIGN_LEFT | ALIGN_MIDDLE);
        button(up, x + w - 26, y, 26, fCtlH, "+", true);
        return y + fRowH;
    }

    void drawTakes(float x, float y, float w, float h)
    {
        panel(x, y, w, h);
        const float rows = static_cast<float>(fSnap.takes.size());
        fScroll = std::clamp(fScroll, 0.0f, std::max(0.0f, rows * kRow - h));
        fListRect = Rect{x, y, w, h};
        scissor(x, y, w, h);
        const size_t first = static_cast<size_t>(fScroll / kRow);
        for (size_t i = first; i < fSnap.takes.size(); ++i) {
            const float ry = y + i * kRow - fScroll;
            if (ry > y + h) break;
            const stemd::UiTake& t = fSnap.takes[i];
            const bool selected = t.serial != 0 && t.serial == fSnap.selected;
            if (selected) {
                beginPath();
                rect(x, ry, w, kRow);
                fillColor(52, 60, 78);
                fill();
            }
            fHits.push_back({Rect{x, std::max(ry, y), w, std::min(kRow, y + h - ry)}, kTakeRow + static_cast<int>(i)});
            fontSize(13);
            fillColor(235, 235, 235);
            label(x + 8, ry + 13, t.prompt.empty() ? std::string("(no prompt)") : t.prompt, w - 190);
            fontSize(12);
            fillColor(170, 170, 170);
            std::string sub = "bar " + std::to_string(t.startBar + 1) + " · " + (t.model.empty() ? "default model" : t.model) +
                              " · " + std::to_string(t.bars) + " bars · v" + std::to_string(t.chosen + 1) + "/" +
                              std::to_string(t.variations) + (t.guide.empty() ? "" : " · " + t.guide);
            if (t.state == "failed") sub = t.errorCode + ": " + t.errorMessage;
            if (t.state == "failed") fillColor(240, 120, 100);
            label(x + 8, ry + 31, sub, w - 190);
            // state, with a progress bar while it streams
            const float sx = x + w - 170;
            fontSize(12);
            if (t.accepted) {
                fillColor(110, 210, 130);
                label(sx, ry + 13, "ACCEPTED", 160);
            } else {
                fillColor(t.state == "failed" ? Color(240, 120, 100) : Color(200, 200, 210));
                label(sx, ry + 13, stateLabel(t), 160);
            }
            const int total = std::max(1, t.bars * t.variations);
            if (t.state == "streaming" || t.state == "queued" || t.state == "accepted" || t.state == "requested") {
                beginPath();
                rect(sx, ry + 26, 150, 8);
                fillColor(60, 62, 70);
                fill();
                beginPath();
                rect(sx, ry + 26, 150.0f * std::min(1.0f, t.barsReceived / static_cast<float>(total)), 8);
                fillColor(90, 150, 230);
                fill();
            } else if (t.state == "done" || t.state == "interrupted") {
                fillColor(150, 150, 150);
                label(sx, ry + 31, std::to_string(t.barsReceived) + "/" + std::to_string(total) + " bars", 160);
            }
        }
        resetScissor();
        if (fSnap.takes.empty()) {
            fillColor(150, 150, 150);
            fontSize(13);
            label(x + 10, y + 20, "No takes yet: type a prompt and press Generate.", w - 20);
        }
    }

    void drawSelected(float x, float y, float w, float h)
    {
        panel(x, y, w, h);
        const stemd::UiTake* t = selectedTake();
        if (!t) return;
        fontSize(13);
        fillColor(235, 235, 235);
        label(x + 8, y + 14, t->prompt + "  (" + t->bpm + " BPM " + t->meter + ", bar " + std::to_string(t->startBar + 1) + ")" +
              (t->guide.empty() ? "" : "  · " + t->guide), w - 16);
        const float wy = y + 28, wh = std::max(40.0f, h - 28 - 100);
        drawWave(*t, x + 8, wy, w - 16, wh);
        float by = wy + wh + 8;
        fillColor(200, 200, 200);
        button(kPrev, x + 8, by, 30, 26, "<", t->variations > 1);
        fillColor(230, 230, 230);
        textAlign(ALIGN_CENTER | ALIGN_MIDDLE);
        const std::string var = "variation " + std::to_string(t->chosen + 1) + "/" + std::to_string(t->variations);
        text(x + 8 + 30 + 60, by + 13, var.c_str(), nullptr);
        textAlign(ALIGN_LEFT | ALIGN_MIDDLE);
        button(kNext, x + 8 + 150, by, 30, 26, ">", t->variations > 1);
        float bx = x + 196;
        const float bw = (w - 196 - 8) / 6 - 4;
        button(kAuditionButton, bx, by, bw, 26, "Audition", t->audio != nullptr);
        button(kAcceptButton, bx += bw + 4, by, bw, 26, t->accepted ? "Accepted" : "Accept", !t->accepted);
        button(kRerollButton, bx += bw + 4, by, bw, 26, "Re-roll", true);
        // extend: once the chosen variation has every bar (it is what the new take continues)
        button(kExtendButton, bx += bw + 4, by, bw, 26, "Extend", t->audio && t->audio->complete(t->chosen));
        const bool confirm = fConfirmDelete == t->serial && t->serial != 0;
        button(kDeleteButton, bx += bw + 4, by, bw, 26, confirm ? "Sure?" : "Delete", t->serial != 0);
        button(kRevealButton, bx += bw + 4, by, bw, 26, "Reveal", true);
        by += 34;
        fontSize(12);
        fillColor(170, 170, 170);
        label(x + 8, by + 8, "folder: " + t->folder, w - 16);
        if (confirm) {
            fillColor(240, 170, 90);
            label(x + 8, by + 26, t->accepted ? "Delete forgets this take; its files stay (it was accepted). Press again."
                                              : "Delete forgets this take and removes its files. Press again.", w - 16);
        } else {
            fillColor(140, 140, 150);
            label(x + 8, by + 26, "To put it on the timeline: drag the WAV from the folder (Reveal) into the DAW.", w - 16);
        }
    }

    void drawWave(const stemd::UiTake& t, float x, float y, float w, float h)
    {
        solid(x, y, w, h, 20, 22, 26);
        if (!t.audio || t.audio->frames() <= 0) return;
        const stemd::TakeAudio& a = *t.audio;
        const int32_t v = std::clamp(t.chosen, 0, a.variations() - 1);
        const float* data = a.variationData(v);
        const int64_t frames = a.frames();
        const int cols = std::max(1, static_cast<int>(w));
        const float mid = y + h / 2;
        beginPath();
        for (int c = 0; c < cols; ++c) {
            const int64_t f0 = frames * c / cols, f1 = std::max(f0 + 1, frames * (c + 1) / cols);
            if (!a.barReady(v, a.barAtOffset(f0))) continue;
            float lo = 0, hi = 0;
            const int64_t stride = std::max<int64_t>(1, (f1 - f0) / 48);
            for (int64_t f = f0; f < f1; f += stride) {
                const float s = 0.5f * (data[f * 2] + data[f * 2 + 1]);
                lo = std::min(lo, s);
                hi = std::max(hi, s);
            }
            rect(x + c, mid - hi * h / 2, 1, std::max(1.0f, (hi - lo) * h / 2));
        }
        fillColor(120, 180, 240);
        fill();
        // bar lines
        beginPath();
        for (int32_t b = 0; b <= a.bars(); ++b) {
            const float bx = x + w * static_cast<float>(a.barOffset(b)) / static_cast<float>(frames);
            moveTo(bx, y);
            lineTo(bx, y + h);
        }
        strokeColor(90, 90, 100);
        strokeWidth(1);
        stroke();
        // the playhead while the host plays over it, or while it auditions with the host stopped
        if (fApi) {
            const stemd::UiPlayhead p = fApi->uiPlayhead();
            const bool auditioning = !p.playing && p.audition != 0 && p.audition == t.serial;
            const int64_t off = p.playing ? p.timeline - t.startSample : auditioning ? p.auditionAt : -1;
            if (off >= 0 && off < frames) {
                const float px = x + w * static_cast<float>(off) / static_cast<float>(frames);
                beginPath();
                moveTo(px, y);
                lineTo(px, y + h);
                strokeColor(250, 220, 80);
                strokeWidth(2);
                stroke();
            }
        }
    }

    void drawModelMenu(float x, float y, float w)
    {
        const float rowH = 40;
        const float h = rowH * static_cast<float>(fSnap.models.size() + 1);
        beginPath();
        rect(x, y, w, h);
        fillColor(44, 46, 54);
        fill();
        strokeColor(120, 120, 130);
        stroke();
        for (size_t i = 0; i <= fSnap.models.size(); ++i) {
            const float ry = y + rowH * i;
            fHits.push_back({Rect{x, ry, w, rowH}, kModelRow + static_cast<int>(i)});
            fontSize(13);
            fillColor(235, 235, 235);
            if (i == 0) {
                label(x + 8, ry + 14, "daemon's default", w - 16);
                continue;
            }
            const stemd::UiModel& m = fSnap.models[i - 1];
            label(x + 8, ry + 13, m.name + (m.loaded ? "  (loaded)" : ""), w - 16);
            fontSize(11);
            fillColor(m.commercial ? Color(120, 200, 140) : Color(240, 110, 90));
            label(x + 8, ry + 29, m.family + " · " + m.license + (m.commercial ? "" : " · NON-COMMERCIAL"), w - 16);
        }
    }

    // ---- small drawing helpers ---------------------------------------------------------------------------
    void panel(float x, float y, float w, float h)
    {
        solid(x, y, w, h, 38, 40, 46);
    }

    // A flat rectangle under everything NanoVG draws this frame: a scissored glClear, which a software
    // renderer fills at memset speed, where a NanoVG fill runs its fragment shader on every pixel (the large
    // flat areas were most of a frame's cost on Mesa's llvmpipe). NanoVG draws at its endFrame, after these.
    void solid(float x, float y, float w, float h, int r, int g, int b)
    {
        const int left = static_cast<int>(std::lround(x * fK)), top = static_cast<int>(std::lround(y * fK));
        const int right = static_cast<int>(std::lround((x + w) * fK)), bottom = static_cast<int>(std::lround((y + h) * fK));
        if (right <= left || bottom <= top) return;
        glEnable(GL_SCISSOR_TEST);
        glScissor(left, static_cast<int>(getHeight()) - bottom, right - left, bottom - top);
        glClearColor(r / 255.0f, g / 255.0f, b / 255.0f, 1.0f);
        glClear(GL_COLOR_BUFFER_BIT);
        glDisable(GL_SCISSOR_TEST);
    }

    void label(float x, float y, const std::string& s, float maxW)
    {
        if (s.empty()) return;
        textAlign(ALIGN_LEFT | ALIGN_MIDDLE);
        scissor(x, y - 20, std::max(0.0f, maxW), 40);
        text(x, y, s.c_str(), nullptr);
        resetScissor();
    }

    void button(int id, float x, float y, float w, float h, const std::string& s, bool enabled)
    {
        beginPath();
        roundedRect(x, y, w, h, 3);
        fillColor(enabled ? Color(66, 72, 88) : Color(48, 50, 56));
        fill();
        fontSize(13);
        fillColor(enabled ? Color(235, 235, 240) : Color(120, 120, 125));
        textAlign(ALIGN_CENTER | ALIGN_MIDDLE);
        text(x + w / 2, y + h / 2, s.c_str(), nullptr);
        textAlign(ALIGN_LEFT | ALIGN_MIDDLE);
        if (enabled) fHits.push_back({Rect{x, y, w, h}, id});
    }

    // `hint`: grey text shown while the box is empty and not focused; `dim`: the box's text does not count now
    // (drawn grey after the hint, unless the box is focused)
    void textField(int id, const TextBox& box, float x, float y, float w, float h, bool secret,
                   const std::string& hint = "", bool dim = false)
    {
        const bool focused = fFocus == id;
        beginPath();
        roundedRect(x, y, w, h, 3);
        fillColor(dim ? Color(34, 35, 40) : Color(18, 19, 22));
        fill();
        strokeColor(focused ? Color(110, 160, 240) : Color(80, 80, 90));
        strokeWidth(focused ? 2 : 1);
        stroke();
        fHits.push_back({Rect{x, y, w, h}, id});
        const std::string shown = secret ? std::string(box.text.size(), '*') : box.text;
        const size_t caret = secret ? box.caret : box.caret;
        fontSize(14);
        if (!focused && (dim || box.text.empty()) && !hint.empty()) {
            scissor(x + 2, y, w - 4, h);
            fillColor(120, 120, 128);
            textAlign(ALIGN_LEFT | ALIGN_MIDDLE);
            const std::string shownDim = box.text.empty() ? hint : hint + " " + box.text;
            text(x + 6, y + h / 2, shownDim.c_str(), nullptr);
            resetScissor();
            return;
        }
        // keep the caret in view: text scrolls left when it is past the box's width
        Rectangle<float> bounds;
        const float caretX = shown.empty() ? 0 : textBounds(0, 0, shown.c_str(), shown.c_str() + caret, bounds);
        const float shift = std::max(0.0f, caretX - (w - 14));
        scissor(x + 2, y, w - 4, h);
        fillColor(235, 235, 235);
        textAlign(ALIGN_LEFT | ALIGN_MIDDLE);
        if (!shown.empty()) text(x + 6 - shift, y + h / 2, shown.c_str(), nullptr);
        if (focused) {
            beginPath();
            rect(x + 6 - shift + caretX, y + 5, 1.5f, h - 10);
            fillColor(235, 235, 235);
            fill();
        }
        resetScissor();
    }

    // ---- input ----------------------------------------------------------------------------------------------
    bool onMouse(const MouseEvent& ev) override
    {
        if (!ev.press || ev.button != 1) return false;
        const float px = static_cast<float>(ev.pos.getX()) / fK, py = static_cast<float>(ev.pos.getY()) / fK;
        int hit = kNone;
        for (auto it = fHits.rbegin(); it != fHits.rend(); ++it)
            if (it->first.contains(px, py)) {
                hit = it->second;
                break;
            }
        if (fMenuOpen && (hit < kModelRow || hit >= kTakeRow)) {
            fMenuOpen = false;
            repaint();
            return true;
        }
        focus((hit == kPromptBox || hit == kKeyBox || hit == kChordsBox || hit == kDaemonBox || hit == kTokenBox) ? hit
                                                                                                               : kNone);
        if (hit != kDeleteButton) fConfirmDelete = 0;
        if (hit == kNone) return false;
        press(hit);
        repaint();
        return true;
    }

    bool onScroll(const ScrollEvent& ev) override
    {
        const float px = static_cast<float>(ev.pos.getX()) / fK, py = static_cast<float>(ev.pos.getY()) / fK;
        if (!fListRect.contains(px, py)) return false;
        fScroll -= static_cast<float>(ev.delta.getY()) * kRow;
        repaint();
        return true;
    }

    // a text box takes the keyboard from the host while it is focused, and gives it back when it lets go
    void focus(int box)
    {
        const uintptr_t native = getWindow().getNativeWindowHandle();
        if (box != kNone && fFocus == kNone) fKeyboardBefore = stemd::takeKeyboard(native);
        else if (box == kNone && fFocus != kNone) stemd::giveBackKeyboard(native, fKeyboardBefore);
        fFocus = box;
    }

    TextBox* focusedBox()
    {
        switch (fFocus) {
        case kPromptBox: return &fPrompt;
        case kKeyBox: return &fKey;
        case kChordsBox: return &fChords;
        case kDaemonBox: return &fDaemon;
        case kTokenBox: return &fToken;
        default: return nullptr;
        }
    }

    bool onKeyboard(const KeyboardEvent& ev) override
    {
        TextBox* box = focusedBox();
        if (!box) return false;  // not typing: the host keeps its keys
        if (!ev.press) return true;
        const bool ctrl = (ev.mod & kModifierControl) != 0;
        switch (ev.key) {
        case kKeyBackspace: box->backspace(); break;
        case kKeyDelete: box->del(); break;
        case kKeyLeft: box->left(); break;
        case kKeyRight: box->right(); break;
        case kKeyHome: box->caret = 0; break;
        case kKeyEnd: box->caret = box->text.size(); break;
        case kKeyEscape: focus(kNone); break;
        case '\r':
        case '\n':
            if (fFocus == kPromptBox || fFocus == kChordsBox) requestTake();
            else if (fFocus == kDaemonBox || fFocus == kTokenBox) applyDaemon();
            else focus(kNone);
            break;
        default:
            if (ctrl && (ev.key == 'v' || ev.key == 'V')) paste(*box);
            else if (ctrl && (ev.key == 'u' || ev.key == 'U')) box->text.clear(), box->caret = 0;
            break;
        }
        if (box == &fChords) sendChords();
        repaint();
        return true;
    }

    bool onCharacterInput(const CharacterInputEvent& ev) override
    {
        TextBox* box = focusedBox();
        if (!box) return false;
        if ((ev.mod & (kModifierControl | kModifierSuper)) != 0 || ev.character < 32 || ev.character == 127) return true;
        box->insert(ev.string);
        if (box == &fChords) sendChords();
        repaint();
        return true;
    }

    void paste(TextBox& box)
    {
        size_t size = 0;
        const void* data = getClipboard(size);
        if (!data || size == 0) return;
        std::string s(static_cast<const char*>(data), std::min<size_t>(size, 8000));
        for (char& c : s)
            if (c == '\n' || c == '\r' || c == '\t') c = ' ';
        s.erase(std::remove(s.begin(), s.end(), '\0'), s.end());
        box.insert(s);
    }

    // ---- what a press does ----------------------------------------------------------------------------------
    void press(int hit)
    {
        if (hit >= kTakeRow) {
            const size_t i = static_cast<size_t>(hit - kTakeRow);
            if (i < fSnap.takes.size() && fApi && fSnap.takes[i].serial != 0) fApi->uiSelect(fSnap.takes[i].serial);
            return;
        }
        if (hit >= kModelRow) {
            const size_t i = static_cast<size_t>(hit - kModelRow);
            fModel = i == 0 || i > fSnap.models.size() ? std::string() : fSnap.models[i - 1].name;
            fMenuOpen = false;
            setState("model", fModel.c_str());
            return;
        }
        if (hit >= kOptionDown + 100) {
            const int n = hit - kOptionDown - 100;
            const auto options = familyOptions(currentModel() ? currentModel()->family : "");
            const size_t i = static_cast<size_t>(n / 2);
            if (i < options.size()) stepOption(*options[i], n % 2 == 0 ? -1 : 1);
            return;
        }
        const stemd::UiTake* t = selectedTake();
        const uint64_t serial = t ? t->serial : 0;
        switch (hit) {
        case kApplyDaemon: applyDaemon(); break;
        case kModelMenu: fMenuOpen = !fMenuOpen; break;
        case kBarsDown: setParam(kBars, fBars = std::max(1, fBars - 1)); break;
        case kBarsUp: setParam(kBars, fBars = std::min(64, fBars + 1)); break;
        case kVarsDown: setParam(kVariations, fVariations = std::max(1, fVariations - 1)); break;
        case kVarsUp: setParam(kVariations, fVariations = std::min(16, fVariations + 1)); break;
        case kStartDown: setParam(kStartBar, fStartBar = std::max(0, fStartBar - 1)); break;
        case kStartUp: setParam(kStartBar, fStartBar = std::min(9999, fStartBar + 1)); break;
        case kGuideBarsDown: setParam(kGuideBars, fGuideBars = std::max(1, fGuideBars - 1)); break;
        case kGuideBarsUp: setParam(kGuideBars, fGuideBars = std::min(64, fGuideBars + 1)); break;
        case kRecordButton: act(stemd::UiAction::RecordGuide, 0); break;
        case kClearButton: act(stemd::UiAction::ClearGuide, 0); break;
        case kGenerateButton: requestTake(); break;
        case kCancelButton: act(stemd::UiAction::Cancel, serial); break;
        case kPrev: act(stemd::UiAction::Previous, serial); break;
        case kNext: act(stemd::UiAction::Next, serial); break;
        case kAuditionButton: act(stemd::UiAction::Audition, serial); break;
        case kAcceptButton: act(stemd::UiAction::Accept, serial); break;
        case kRerollButton: act(stemd::UiAction::Reroll, serial); break;
        case kExtendButton: act(stemd::UiAction::Extend, serial); break;
        case kRevealButton: act(stemd::UiAction::Reveal, serial); break;
        case kDeleteButton:
            if (fConfirmDelete == serial && serial != 0) {
                act(stemd::UiAction::Delete, serial);
                fConfirmDelete = 0;
            } else {
                fConfirmDelete = serial;
            }
            break;
        default: break;
        }
    }

    void act(stemd::UiAction action, uint64_t serial)
    {
        if (fApi) fApi->uiAction(action, serial);
    }

    void setParam(uint32_t index, int value)
    {
        setParameterValue(index, static_cast<float>(value));
    }

    void applyDaemon()
    {
        setState("daemon", fDaemon.text.c_str());
        setState("token", fToken.text.c_str());
        focus(kNone);
    }

    // The chords box's text into the `chords` state (the plugin sends it unless a recorded guide wins) as it is
    // typed: the host may deliver a state later than uiGenerate (LV2 passes it through run()), so it is
    // there well before a request is made; also what MIDI-note requests and the host's project get.
    void sendChords()
    {
        if (fChords.text == fChordsSent) return;
        fChordsSent = fChords.text;
        setState("chords", fChordsSent.c_str());
    }

    void requestTake()
    {
        if (!fApi) return;
        const std::string options = optionsJson();
        setState("prompt", fPrompt.text.c_str());
        setState("key", fKey.text.c_str());
        sendChords();
        setState("options", options.c_str());
        fApi->uiGenerate(fPrompt.text, fModel, fKey.text, options, fChords.text, fBars, fVariations, fStartBar);
    }

    // ---- the family's own keys ------------------------------------------------------------------------------
    float optionValue(const char* key) const
    {
        for (const auto& kv : fOptions)
            if (kv.first == key) return kv.second;
        return -1;
    }

    void stepOption(const Option& o, int direction)
    {
        float v = optionValue(o.key);
        v = v < 0 ? o.initial : std::clamp(v + direction * o.step, o.lo, o.hi);
        if (o.integer) v = std::round(v);
        bool found = false;
        for (auto& kv : fOptions)
            if (kv.first == o.key) kv.second = v, found = true;
        if (!found) fOptions.emplace_back(o.key, v);
        const std::string json = optionsJson();
        setState("options", json.c_str());
    }

    // only the chosen family's keys go into the request (another family would refuse them)
    std::string optionsJson() const
    {
        const auto keys = familyOptions(currentModel() ? currentModel()->family : "");
        std::string json = "{";
        for (const Option* o : keys) {
            const float v = optionValue(o->key);
            if (v < 0) continue;
            if (json.size() > 1) json += ", ";
            json += std::string("\"") + o->key + "\": " + fmt(v, o->integer);
        }
        return json + "}";
    }

    void readOptions(const std::string& text)
    {
        fOptions.clear();
        stemd::Json json;
        std::string error;
        if (text.empty() || !stemd::parseJson(text, json, error) || json.type != stemd::Json::Type::Object) return;
        for (const auto& member : json.members)
            if (member.second.type == stemd::Json::Type::Number)
                fOptions.emplace_back(member.first, static_cast<float>(member.second.number));
    }

    // ---- lookups ------------------------------------------------------------------------------------------------
    const stemd::UiModel* currentModel() const
    {
        for (const auto& m : fSnap.models)
            if (m.name == fModel) return &m;
        if (fModel.empty())  // the daemon's default: its first loaded model
            for (const auto& m : fSnap.models)
                if (m.loaded) return &m;
        return nullptr;
    }

    const stemd::UiTake* selectedTake() const
    {
        for (const auto& t : fSnap.takes)
            if (t.serial != 0 && t.serial == fSnap.selected) return &t;
        return fSnap.takes.empty() ? nullptr : &fSnap.takes.front();
    }

    // STEMD_UI_LOG=<file>: one line per change of what the window shows (for tests and bug reports): the
    // connection, the guide panel (guide bars, the Record button's label, Clear enabled, where Generate, Record
    // and the chords box are, in logical pixels, the guide, recorder and warning lines, the chords box: its text with '|'
    // written as '¦', "dim" while a recorded guide wins), the prompt, then " | " and each take: id, state, bars
    // received, chosen variation, accepted, its guide, its error (code and message).
    void writeLog()
    {
        if (fLogPath.empty()) return;
        const auto at = [](const Rect& r) {
            return std::to_string(std::lround(r.x + r.w / 2)) + "," + std::to_string(std::lround(r.y + r.h / 2));
        };
        std::string line = "connected=" + std::to_string(fSnap.connected ? 1 : 0) + " models=" +
                           std::to_string(fSnap.models.size()) + " focus=" + std::to_string(fFocus) +
                           " guide_bars=" + std::to_string(fGuideBars) + " record=" + fRecordLabel +
                           " clear=" + (fClearEnabled ? "1" : "0") + " generate@" + at(fGenerateAt) + " record@" +
                           at(fRecordAt) + " chords@" + at(fChordsAt) + " guide=" + bars(fGuideLine) + " recorder=" +
                           bars(fRecorderLine) + " warning=" + bars(fWarning) + " chords" +
                           (fSnap.guide.bars > 0 ? "(dim)=" : "=") + bars(fChords.text) + " prompt=" + fPrompt.text;
        for (const auto& t : fSnap.takes)
            line += " | " + t.id + " " + t.state + " q" + std::to_string(t.queueAhead) + " bars" +
                    std::to_string(t.barsReceived) + " v" + std::to_string(t.chosen + 1) + "/" +
                    std::to_string(t.variations) + (t.accepted ? " accepted" : "") +
                    (t.serial == fSnap.selected ? " selected" : "") + (t.guide.empty() ? "" : " guide=" + bars(t.guide)) +
                    (t.errorCode.empty() ? "" : " error=" + t.errorCode + " (" + bars(t.errorMessage) + ")") +
                    " prompt=" + t.prompt;
        if (line == fLastLog) return;
        fLastLog = line;
        if (FILE* f = std::fopen(fLogPath.c_str(), "a")) {
            std::fprintf(f, "%s\n", line.c_str());
            std::fclose(f);
        }
    }

    // free text in the log with its '|' as '¦' (" | " separates the takes)
    static std::string bars(const std::string& text)
    {
        std::string out;
        for (const char c : text) out += c == '|' ? std::string("\u00a6") : std::string(1, c);
        return out;
    }

private:
    stemd::UiApi* fApi = nullptr;
    stemd::UiSnapshot fSnap;  // this frame's read of the plugin (refilled every frame, never edited)
    std::vector<std::pair<Rect, int>> fHits;
    Rect fListRect{0, 0, 0, 0};
    float fK = 1.0f, fScroll = 0.0f;
    int fFocus = kNone;
    uintptr_t fKeyboardBefore = 0;  // who had the keyboard before a text box took it (X11)
    bool fMenuOpen = false;
    uint64_t fConfirmDelete = 0;
    TextBox fPrompt, fKey, fDaemon, fToken, fChords;
    std::string fChordsSent;  // the chords state as this window last set or was told it
    std::string fModel;
    std::vector<std::pair<std::string, float>> fOptions;
    int fBars = 4, fVariations = 1, fStartBar = 0, fGuideBars = 4;
    float fRowH = 30, fCtlH = 24, fMenuY = 160;  // the request panel's row pitch and control height (it packs)
    std::string fGuideLine, fRecorderLine, fRecordLabel, fWarning;  // as drawn this frame (for the log)
    bool fClearEnabled = false;
    Rect fGenerateAt{0, 0, 0, 0}, fRecordAt{0, 0, 0, 0}, fChordsAt{0, 0, 0, 0};
    std::string fLogPath, fLastLog;
    stemd::UiSnapshot fProbe;       // uiIdle's read, to see whether anything changed
    std::string fSignature[2];
    // STEMD_UI_FRAMES=<file>: one line per frame: ms from the frame's start to the next idle (snapshot, drawing,
    // NanoVG's flush and the buffer swap), ms to build it (snapshot and drawing calls), takes, scroll
    using Clock = std::chrono::steady_clock;
    std::string fFramesPath;
    Clock::time_point fFrameStart;
    double fBuildMs = 0;

    DISTRHO_DECLARE_NON_COPYABLE_WITH_LEAK_DETECTOR(StemdUI)
};

UI* createUI()
{
    return new StemdUI();
}

END_NAMESPACE_DISTRHO
