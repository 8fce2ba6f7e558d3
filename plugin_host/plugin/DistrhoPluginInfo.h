// What the stemd plugin is, for DPF: an instrument (MIDI in, stereo out, no audio in) that reads the
// host's transport, keeps state the host saves, and has a window (StemdUI.cpp: DGL with NanoVG) that reads
// the plugin through direct access (ui_api.hpp).
#ifndef STEMD_DISTRHO_PLUGIN_INFO_H
#define STEMD_DISTRHO_PLUGIN_INFO_H

#define DISTRHO_PLUGIN_BRAND "stemd"
#define DISTRHO_PLUGIN_NAME  "stemd"
#define DISTRHO_PLUGIN_URI   "urn:stemd:plugin"
#define DISTRHO_PLUGIN_CLAP_ID "org.stemd.plugin"

#define DISTRHO_PLUGIN_HAS_UI        1
#define DISTRHO_PLUGIN_WANT_DIRECT_ACCESS 1
#define DISTRHO_UI_USE_NANOVG        1
#define DISTRHO_UI_USER_RESIZABLE    1
#define DISTRHO_UI_DEFAULT_WIDTH     980
#define DISTRHO_UI_DEFAULT_HEIGHT    640
#define DISTRHO_PLUGIN_IS_RT_SAFE    1
#define DISTRHO_PLUGIN_IS_SYNTH      1
#define DISTRHO_PLUGIN_NUM_INPUTS    0
#define DISTRHO_PLUGIN_NUM_OUTPUTS   2
#define DISTRHO_PLUGIN_WANT_MIDI_INPUT  1
#define DISTRHO_PLUGIN_WANT_MIDI_OUTPUT 0
#define DISTRHO_PLUGIN_WANT_PROGRAMS 0
#define DISTRHO_PLUGIN_WANT_STATE    1
#define DISTRHO_PLUGIN_WANT_FULL_STATE 1
#define DISTRHO_PLUGIN_WANT_TIMEPOS  1
#define DISTRHO_PLUGIN_WANT_LATENCY  0

#define DISTRHO_PLUGIN_LV2_CATEGORY    "lv2:InstrumentPlugin"
#define DISTRHO_PLUGIN_VST3_CATEGORIES "Instrument|Sampler|Stereo"
#define DISTRHO_PLUGIN_CLAP_FEATURES   "instrument", "sampler", "stereo"

#endif
