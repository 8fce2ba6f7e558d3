// The window's few calls to the desktop: reveal a take's folder in the file manager (off the audio and
// window threads), and take or give back the keyboard while a text box is focused.
#include "ui_api.hpp"

#include <thread>

#if defined(__linux__)
#include <X11/Xlib.h>
#include <spawn.h>
#include <sys/wait.h>
extern char** environ;
#endif

namespace stemd {

void revealFolder(const std::string& folder)
{
#if defined(__linux__)
    std::thread([folder] {
        pid_t pid = 0;
        std::string path = folder;
        char program[] = "xdg-open";
        char* argv[] = {program, path.data(), nullptr};
        if (posix_spawnp(&pid, program, nullptr, nullptr, argv, environ) == 0) waitpid(pid, nullptr, 0);
    }).detach();
#else
    (void)folder;  // macOS (open) and Windows (explorer) are not built here
#endif
}

// X11: the keyboard goes to the focus window, or to the window under the pointer when that is inside it.
// A host that forwards every key it receives to its own shortcuts (Ardour's plugin window does) still
// sees keys typed with the pointer elsewhere; so while a text box has the focus, the plugin's window
// holds X's input focus itself, and gives it back to whatever held it before when the box lets go.
namespace {

#if defined(__linux__)
struct XConnection {
    Display* display = XOpenDisplay(nullptr);
    ~XConnection()
    {
        if (display) XCloseDisplay(display);
    }
};
#endif

}  // namespace

uintptr_t takeKeyboard(uintptr_t window)
{
#if defined(__linux__)
    XConnection x;
    if (!x.display || window == 0) return 0;
    ::Window previous = 0;
    int revert = 0;
    XGetInputFocus(x.display, &previous, &revert);
    if (previous == static_cast<::Window>(window)) return 0;
    XSetInputFocus(x.display, static_cast<::Window>(window), RevertToParent, CurrentTime);
    XSync(x.display, False);
    return static_cast<uintptr_t>(previous);
#else
    (void)window;
    return 0;
#endif
}

void giveBackKeyboard(uintptr_t window, uintptr_t previous)
{
#if defined(__linux__)
    XConnection x;
    if (!x.display || window == 0) return;
    ::Window now = 0;
    int revert = 0;
    XGetInputFocus(x.display, &now, &revert);
    if (now != static_cast<::Window>(window)) return;  // someone else has it already: leave it there
    // the previous holder (0: None; 1: PointerRoot, X's "the window under the pointer")
    XSetInputFocus(x.display, previous == 0 ? PointerRoot : static_cast<::Window>(previous), RevertToPointerRoot,
                   CurrentTime);
    XSync(x.display, False);
#else
    (void)window;
    (void)previous;
#endif
}

}  // namespace stemd
