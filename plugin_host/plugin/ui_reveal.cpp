// Reveal a take's folder in the file manager, off the audio and window threads.
#include "ui_api.hpp"

#include <thread>

#if defined(__linux__)
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

}  // namespace stemd
