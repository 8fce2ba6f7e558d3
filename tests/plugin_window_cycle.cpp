// A small LV2 host for the plugin's window: loads build/.../stemd.lv2/stemd.so, instantiates and activates
// the plugin (its worker and network threads running, its audio run by a thread of this host every 5 ms),
// then opens the window (the LV2 UI in the same binary, with instance access), shows it, lets it draw for
// a few idle rounds, hides and closes it, N times. Prints the host's resident memory after the first few
// cycles and after the last, so a test can bound the growth; built with AddressSanitizer by the test.
//   plugin_window_cycle <bundle dir> <cycles>
#include <lv2/atom/atom.h>
#include <lv2/buf-size/buf-size.h>
#include <lv2/core/lv2.h>
#include <lv2/data-access/data-access.h>
#include <lv2/instance-access/instance-access.h>
#include <lv2/options/options.h>
#include <lv2/parameters/parameters.h>
#include <lv2/ui/ui.h>
#include <lv2/urid/urid.h>
#include <lv2/worker/worker.h>

#include <X11/Xlib.h>
#include <dlfcn.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace {

std::mutex gUridMutex;
std::vector<std::string> gUris;

LV2_URID mapUri(LV2_URID_Map_Handle, const char* uri)
{
    const std::lock_guard<std::mutex> lock(gUridMutex);
    for (size_t i = 0; i < gUris.size(); ++i)
        if (gUris[i] == uri) return static_cast<LV2_URID>(i + 1);
    gUris.emplace_back(uri);
    return static_cast<LV2_URID>(gUris.size());
}

LV2_Worker_Status scheduleWork(LV2_Worker_Schedule_Handle, uint32_t, const void*)
{
    return LV2_WORKER_ERR_NO_SPACE;  // the window's state changes are not exercised here
}

long residentKiB()
{
    FILE* f = std::fopen("/proc/self/statm", "r");
    long pages = 0, resident = 0;
    if (f) {
        if (std::fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
        std::fclose(f);
    }
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

void writeUi(LV2UI_Controller, uint32_t, uint32_t, uint32_t, const void*) {}

}  // namespace

int main(int argc, char** argv)
{
    if (argc < 3) {
        std::fprintf(stderr, "usage: %s <stemd.lv2 folder> <cycles>\n", argv[0]);
        return 2;
    }
    const std::string bundle = std::string(argv[1]) + "/";
    const int cycles = std::atoi(argv[2]);
    void* lib = dlopen((bundle + "stemd.so").c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        std::fprintf(stderr, "dlopen: %s\n", dlerror());
        return 1;
    }
    auto pluginEntry = reinterpret_cast<LV2_Descriptor_Function>(dlsym(lib, "lv2_descriptor"));
    auto uiEntry = reinterpret_cast<LV2UI_DescriptorFunction>(dlsym(lib, "lv2ui_descriptor"));
    if (!pluginEntry || !uiEntry) return 1;
    const LV2_Descriptor* plugin = pluginEntry(0);
    const LV2UI_Descriptor* ui = uiEntry(0);
    if (!plugin || !ui) return 1;

    LV2_URID_Map map{nullptr, mapUri};
    LV2_Worker_Schedule worker{nullptr, scheduleWork};
    const int32_t blockLength = 256;
    const float sampleRate = 48000.0f;
    const LV2_Options_Option options[] = {
        {LV2_OPTIONS_INSTANCE, 0, mapUri(nullptr, LV2_BUF_SIZE__maxBlockLength), sizeof(int32_t),
         mapUri(nullptr, LV2_ATOM__Int), &blockLength},
        {LV2_OPTIONS_INSTANCE, 0, mapUri(nullptr, LV2_PARAMETERS__sampleRate), sizeof(float),
         mapUri(nullptr, LV2_ATOM__Float), &sampleRate},
        {LV2_OPTIONS_INSTANCE, 0, 0, 0, 0, nullptr}};
    LV2_Feature mapFeature{LV2_URID__map, &map};
    LV2_Feature optionsFeature{LV2_OPTIONS__options, const_cast<LV2_Options_Option*>(options)};
    LV2_Feature workerFeature{LV2_WORKER__schedule, &worker};
    const LV2_Feature* pluginFeatures[] = {&mapFeature, &optionsFeature, &workerFeature, nullptr};

    LV2_Handle instance = plugin->instantiate(plugin, 48000.0, bundle.c_str(), pluginFeatures);
    if (!instance) {
        std::fprintf(stderr, "the plugin did not instantiate\n");
        return 1;
    }
    // every port gets a buffer: audio outputs, control ports, and empty atom sequences for the event ports
    alignas(16) static float buffers[64][1024];
    for (uint32_t port = 0; port < 64; ++port) {
        std::memset(buffers[port], 0, sizeof buffers[port]);
        auto* seq = reinterpret_cast<LV2_Atom_Sequence*>(buffers[port]);
        seq->atom.size = sizeof(LV2_Atom_Sequence_Body);
        seq->atom.type = mapUri(nullptr, LV2_ATOM__Sequence);
        plugin->connect_port(instance, port, buffers[port]);
    }
    if (plugin->activate) plugin->activate(instance);
    std::atomic<bool> running{true};
    const LV2_URID sequence = mapUri(nullptr, LV2_ATOM__Sequence);
    std::thread audio([&] {
        while (running.load()) {
            for (uint32_t port = 0; port < 64; ++port) {  // empty sequences again, every block
                auto* seq = reinterpret_cast<LV2_Atom_Sequence*>(buffers[port]);
                seq->atom.size = sizeof(LV2_Atom_Sequence_Body);
                seq->atom.type = sequence;
            }
            plugin->run(instance, blockLength);
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
    });

    LV2_Extension_Data_Feature extData{plugin->extension_data};
    LV2_Feature instanceFeature{LV2_INSTANCE_ACCESS_URI, instance};
    LV2_Feature dataFeature{LV2_DATA_ACCESS_URI, &extData};
    const LV2_Feature* uiFeatures[] = {&mapFeature, &optionsFeature, &instanceFeature, &dataFeature, nullptr, nullptr};
    const auto* idle = static_cast<const LV2UI_Idle_Interface*>(ui->extension_data(LV2_UI__idleInterface));
    const auto* show = static_cast<const LV2UI_Show_Interface*>(ui->extension_data(LV2_UI__showInterface));
    if (!idle || !show) {
        std::fprintf(stderr, "the UI has no idle or show interface\n");
        return 1;
    }

    // the host's own window, into which each plugin window is embedded (as hosts do: ui:parent)
    Display* display = XOpenDisplay(nullptr);
    if (!display) {
        std::fprintf(stderr, "no X display\n");
        return 1;
    }
    const Window parent = XCreateSimpleWindow(display, DefaultRootWindow(display), 0, 0, 980, 640, 0, 0, 0);
    XMapWindow(display, parent);
    XSync(display, False);
    LV2_Feature parentFeature{LV2_UI__parent, reinterpret_cast<void*>(parent)};
    uiFeatures[4] = &parentFeature;

    long early = 0;
    for (int cycle = 1; cycle <= cycles; ++cycle) {
        LV2UI_Widget widget = nullptr;
        LV2UI_Handle handle = ui->instantiate(ui, "urn:stemd:plugin", bundle.c_str(), writeUi, nullptr, &widget, uiFeatures);
        if (!handle) {
            std::fprintf(stderr, "cycle %d: the window did not open\n", cycle);
            return 1;
        }
        show->show(handle);
        for (int i = 0; i < 8; ++i) {
            idle->idle(handle);
            std::this_thread::sleep_for(std::chrono::milliseconds(15));
        }
        show->hide(handle);
        ui->cleanup(handle);
        if (cycle == 5) early = residentKiB();
        std::printf("cycle %d rss_kib %ld\n", cycle, residentKiB());
        std::fflush(stdout);
    }
    running.store(false);
    audio.join();
    if (plugin->deactivate) plugin->deactivate(instance);
    plugin->cleanup(instance);
    std::printf("opened and closed %d times; rss after cycle 5: %ld KiB, after the last: %ld KiB\n", cycles, early,
                residentKiB());
    XDestroyWindow(display, parent);
    XCloseDisplay(display);
    dlclose(lib);
    return 0;
}
