/* A resolver for the link tests, put in front of the C library's with LD_PRELOAD: getaddrinfo of the
 * name "hang.stemd.test" answers after 60 s (a DNS server that never replies), of "slow.stemd.test"
 * after 1.5 s as 127.0.0.1; every other name, and every AI_NUMERICHOST call, goes to the real one.
 * With STEMD_RESOLVER_LOG set, each lookup of a test name appends its name to that file.
 *   make -C plugin_host/plugin -f Makefile.link slow_resolver   build/plugin/libstemd_slow_resolver.so */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef int (*getaddrinfo_fn)(const char*, const char*, const struct addrinfo*, struct addrinfo**);

static void log_lookup(const char* node) {
    const char* path = getenv("STEMD_RESOLVER_LOG");
    FILE* out = path != NULL ? fopen(path, "a") : NULL;
    if (out == NULL) return;
    fprintf(out, "%s\n", node);
    fclose(out);
}

int getaddrinfo(const char* node, const char* service, const struct addrinfo* hints, struct addrinfo** res) {
    getaddrinfo_fn real = (getaddrinfo_fn)dlsym(RTLD_NEXT, "getaddrinfo");
    const int numeric = hints != NULL && (hints->ai_flags & AI_NUMERICHOST) != 0;
    if (real == NULL) return EAI_SYSTEM;
    if (node != NULL && !numeric && strcmp(node, "hang.stemd.test") == 0) {
        log_lookup(node);
        sleep(60);
        return EAI_AGAIN;
    }
    if (node != NULL && !numeric && strcmp(node, "slow.stemd.test") == 0) {
        log_lookup(node);
        usleep(1500000);
        node = "127.0.0.1";
    }
    return real(node, service, hints, res);
}
