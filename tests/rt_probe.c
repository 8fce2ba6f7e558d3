/* rt_probe: an LD_PRELOAD interposer that counts what a plugin's audio callback must never do.
 *
 * The stemd plugin calls stemd_rt_probe(1) when its run() starts and stemd_rt_probe(0) before it
 * returns (a weak symbol: in a normal host nothing is called). Between the two, on that thread, every
 * allocation (malloc, calloc, realloc, free, posix_memalign, aligned_alloc, memalign), lock (pthread
 * mutex/rwlock/spin locks, condition variables, semaphores) and system call through libc's wrappers
 * (write, read, send, recv, sendto, recvfrom, poll, open, openat, fopen, nanosleep, usleep, and
 * syscall(), where futex waits and wakes go) is counted. At exit the counts are appended as one JSON
 * line to the file named by $STEMD_RT_PROBE_OUT (one line per process: a host may start helpers), with
 * the run() entries seen (so that a test can tell "no violation" from "the probe never ran") and, per
 * kind, the function and the caller that made the first call.
 *
 * Built by the tests: cc -shared -fPIC -O1 -o rt_probe.so rt_probe.c -ldl -lpthread
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

/* initial-exec: reading the flag must not itself call into the dynamic linker (which may allocate) */
static __thread int in_rt __attribute__((tls_model("initial-exec")));
static __thread int in_probe __attribute__((tls_model("initial-exec")));

enum kind { K_ALLOC, K_FREE, K_LOCK, K_SYSCALL, K_FUTEX, K_COUNT };
static const char *const kind_names[K_COUNT] = {"alloc", "free", "lock", "syscall", "futex"};

static atomic_long entries;          /* stemd_rt_probe(1) calls */
static atomic_long counts[K_COUNT];
static atomic_long by_name_count[64];
static const char *by_name[64];      /* the interposed function's name, per slot */
static atomic_int names_used;
static void *first_caller[K_COUNT];  /* return address of the first counted call of each kind */
static const char *first_name[K_COUNT];

void stemd_rt_probe(int entering)
{
    if (entering) {
        atomic_fetch_add(&entries, 1);
        in_rt = 1;
    } else {
        in_rt = 0;
    }
}

static int name_slot(const char *name)
{
    int used = atomic_load(&names_used);
    for (int i = 0; i < used; i++)
        if (by_name[i] == name)
            return i;
    int slot = atomic_fetch_add(&names_used, 1);
    if (slot >= 64)
        return -1;
    by_name[slot] = name;
    return slot;
}

/* called only when in_rt is set; in_probe keeps the counting itself from being counted */
static void count(enum kind k, const char *name, void *caller)
{
    if (in_probe)
        return;
    in_probe = 1;
    if (atomic_fetch_add(&counts[k], 1) == 0) {
        first_caller[k] = caller;
        first_name[k] = name;
    }
    int slot = name_slot(name);
    if (slot >= 0)
        atomic_fetch_add(&by_name_count[slot], 1);
    in_probe = 0;
}

#define COUNT(k, name) do { if (in_rt) count((k), (name), __builtin_return_address(0)); } while (0)

/* ---- allocation: glibc's own entry points, so no dlsym bootstrap is needed ---- */
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void __libc_free(void *);
extern void *__libc_memalign(size_t, size_t);

void *malloc(size_t n) { COUNT(K_ALLOC, "malloc"); return __libc_malloc(n); }
void *calloc(size_t n, size_t m) { COUNT(K_ALLOC, "calloc"); return __libc_calloc(n, m); }
void *realloc(void *p, size_t n) { COUNT(K_ALLOC, "realloc"); return __libc_realloc(p, n); }
void free(void *p) { if (p) COUNT(K_FREE, "free"); __libc_free(p); }
void *memalign(size_t a, size_t n) { COUNT(K_ALLOC, "memalign"); return __libc_memalign(a, n); }
void *aligned_alloc(size_t a, size_t n) { COUNT(K_ALLOC, "aligned_alloc"); return __libc_memalign(a, n); }
int posix_memalign(void **out, size_t a, size_t n)
{
    COUNT(K_ALLOC, "posix_memalign");
    if (a < sizeof(void *) || (a & (a - 1)))
        return 22; /* EINVAL */
    void *p = __libc_memalign(a, n);
    if (!p)
        return 12; /* ENOMEM */
    *out = p;
    return 0;
}

/* ---- everything else: the next definition, looked up once at load ---- */
#define REAL(ret, name, ...) static ret (*real_##name)(__VA_ARGS__)
REAL(int, pthread_mutex_lock, pthread_mutex_t *);
REAL(int, pthread_mutex_trylock, pthread_mutex_t *);
REAL(int, pthread_mutex_timedlock, pthread_mutex_t *, const struct timespec *);
REAL(int, pthread_rwlock_rdlock, pthread_rwlock_t *);
REAL(int, pthread_rwlock_wrlock, pthread_rwlock_t *);
REAL(int, pthread_spin_lock, pthread_spinlock_t *);
REAL(int, pthread_cond_wait, pthread_cond_t *, pthread_mutex_t *);
REAL(int, pthread_cond_timedwait, pthread_cond_t *, pthread_mutex_t *, const struct timespec *);
REAL(int, pthread_cond_signal, pthread_cond_t *);
REAL(int, pthread_cond_broadcast, pthread_cond_t *);
REAL(int, sem_post, sem_t *);
REAL(int, sem_wait, sem_t *);
REAL(int, sem_timedwait, sem_t *, const struct timespec *);
REAL(ssize_t, write, int, const void *, size_t);
REAL(ssize_t, read, int, void *, size_t);
REAL(ssize_t, send, int, const void *, size_t, int);
REAL(ssize_t, recv, int, void *, size_t, int);
REAL(ssize_t, sendto, int, const void *, size_t, int, const struct sockaddr *, socklen_t);
REAL(ssize_t, recvfrom, int, void *, size_t, int, struct sockaddr *, socklen_t *);
REAL(int, poll, struct pollfd *, nfds_t, int);
REAL(int, open, const char *, int, ...);
REAL(int, open64, const char *, int, ...);
REAL(int, openat, int, const char *, int, ...);
REAL(FILE *, fopen, const char *, const char *);
REAL(int, nanosleep, const struct timespec *, struct timespec *);
REAL(int, clock_nanosleep, clockid_t, int, const struct timespec *, struct timespec *);
REAL(int, usleep, useconds_t);
REAL(int, sched_yield, void);
REAL(long, syscall, long, ...);

#define RESOLVE(name) real_##name = dlsym(RTLD_NEXT, #name)

__attribute__((constructor)) static void resolve_all(void)
{
    RESOLVE(pthread_mutex_lock); RESOLVE(pthread_mutex_trylock); RESOLVE(pthread_mutex_timedlock);
    RESOLVE(pthread_rwlock_rdlock); RESOLVE(pthread_rwlock_wrlock); RESOLVE(pthread_spin_lock);
    RESOLVE(pthread_cond_wait); RESOLVE(pthread_cond_timedwait); RESOLVE(pthread_cond_signal);
    RESOLVE(pthread_cond_broadcast); RESOLVE(sem_post); RESOLVE(sem_wait); RESOLVE(sem_timedwait);
    RESOLVE(write); RESOLVE(read); RESOLVE(send); RESOLVE(recv); RESOLVE(sendto); RESOLVE(recvfrom);
    RESOLVE(poll); RESOLVE(open); RESOLVE(open64); RESOLVE(openat); RESOLVE(fopen); RESOLVE(nanosleep);
    RESOLVE(clock_nanosleep); RESOLVE(usleep); RESOLVE(sched_yield); RESOLVE(syscall);
}

#define LOCK(name, params, args) \
    int name params { COUNT(K_LOCK, #name); if (!real_##name) RESOLVE(name); return real_##name args; }
LOCK(pthread_mutex_lock, (pthread_mutex_t *m), (m))
LOCK(pthread_mutex_trylock, (pthread_mutex_t *m), (m))
LOCK(pthread_mutex_timedlock, (pthread_mutex_t *m, const struct timespec *t), (m, t))
LOCK(pthread_rwlock_rdlock, (pthread_rwlock_t *l), (l))
LOCK(pthread_rwlock_wrlock, (pthread_rwlock_t *l), (l))
LOCK(pthread_spin_lock, (pthread_spinlock_t *l), (l))
LOCK(pthread_cond_wait, (pthread_cond_t *c, pthread_mutex_t *m), (c, m))
LOCK(pthread_cond_timedwait, (pthread_cond_t *c, pthread_mutex_t *m, const struct timespec *t), (c, m, t))
LOCK(pthread_cond_signal, (pthread_cond_t *c), (c))
LOCK(pthread_cond_broadcast, (pthread_cond_t *c), (c))
LOCK(sem_post, (sem_t *s), (s))
LOCK(sem_wait, (sem_t *s), (s))
LOCK(sem_timedwait, (sem_t *s, const struct timespec *t), (s, t))

#define SYS(ret, name, params, args) \
    ret name params { COUNT(K_SYSCALL, #name); if (!real_##name) RESOLVE(name); return real_##name args; }
SYS(ssize_t, write, (int fd, const void *b, size_t n), (fd, b, n))
SYS(ssize_t, read, (int fd, void *b, size_t n), (fd, b, n))
SYS(ssize_t, send, (int fd, const void *b, size_t n, int f), (fd, b, n, f))
SYS(ssize_t, recv, (int fd, void *b, size_t n, int f), (fd, b, n, f))
SYS(ssize_t, sendto, (int fd, const void *b, size_t n, int f, const struct sockaddr *a, socklen_t l),
    (fd, b, n, f, a, l))
SYS(ssize_t, recvfrom, (int fd, void *b, size_t n, int f, struct sockaddr *a, socklen_t *l), (fd, b, n, f, a, l))
SYS(int, poll, (struct pollfd *p, nfds_t n, int t), (p, n, t))
SYS(FILE *, fopen, (const char *p, const char *m), (p, m))
SYS(int, nanosleep, (const struct timespec *t, struct timespec *r), (t, r))
SYS(int, clock_nanosleep, (clockid_t c, int f, const struct timespec *t, struct timespec *r), (c, f, t, r))
SYS(int, usleep, (useconds_t u), (u))
SYS(int, sched_yield, (void), ())

static mode_t mode_arg(int flags, va_list ap)
{
    return (flags & (O_CREAT | O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0;
}

/* open, open64 and openat: a mode follows the flags only with O_CREAT or O_TMPFILE */
#define OPEN(name, params, args) \
    int name params \
    { \
        va_list ap; \
        va_start(ap, flags); \
        mode_t mode = mode_arg(flags, ap); \
        va_end(ap); \
        COUNT(K_SYSCALL, #name); \
        if (!real_##name) RESOLVE(name); \
        return real_##name args; \
    }
OPEN(open, (const char *path, int flags, ...), (path, flags, mode))
OPEN(open64, (const char *path, int flags, ...), (path, flags, mode))
OPEN(openat, (int dir, const char *path, int flags, ...), (dir, path, flags, mode))

long syscall(long number, ...)
{
    va_list ap;
    va_start(ap, number);
    long a[6];
    for (int i = 0; i < 6; i++)
        a[i] = va_arg(ap, long);
    va_end(ap);
    if (number == SYS_futex)
        COUNT(K_FUTEX, "syscall(futex)");
    else
        COUNT(K_SYSCALL, "syscall");
    if (!real_syscall) RESOLVE(syscall);
    return real_syscall(number, a[0], a[1], a[2], a[3], a[4], a[5]);
}

/* ---- the report ---- */
static void write_json_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (; s && *s; s++) {
        if (*s == '"' || *s == '\\')
            fputc('\\', f);
        if ((unsigned char)*s >= 0x20)
            fputc(*s, f);
    }
    fputc('"', f);
}

__attribute__((destructor)) static void report(void)
{
    const char *path = getenv("STEMD_RT_PROBE_OUT");
    in_rt = 0;
    if (!path || !*path)
        return;
    FILE *f = fopen(path, "a");
    if (!f)
        return;
    fprintf(f, "{\"pid\": %d, \"entries\": %ld", (int)getpid(), atomic_load(&entries));
    for (int k = 0; k < K_COUNT; k++)
        fprintf(f, ", \"%s\": %ld", kind_names[k], atomic_load(&counts[k]));
    fputs(", \"calls\": {", f);
    int used = atomic_load(&names_used);
    for (int i = 0; i < used && i < 64; i++) {
        if (i)
            fputs(", ", f);
        write_json_string(f, by_name[i]);
        fprintf(f, ": %ld", atomic_load(&by_name_count[i]));
    }
    fputs("}, \"first\": {", f);
    int first = 1;
    for (int k = 0; k < K_COUNT; k++) {
        if (!first_name[k])
            continue;
        Dl_info info;
        char where[512];
        if (dladdr(first_caller[k], &info) && info.dli_fname) {
            snprintf(where, sizeof where, "%s via %s in %s+0x%lx", first_name[k],
                     info.dli_sname ? info.dli_sname : "?", info.dli_fname,
                     (unsigned long)((char *)first_caller[k] - (char *)info.dli_fbase));
        } else {
            snprintf(where, sizeof where, "%s via %p", first_name[k], first_caller[k]);
        }
        fprintf(f, "%s\"%s\": ", first ? "" : ", ", kind_names[k]);
        write_json_string(f, where);
        first = 0;
    }
    fputs("}}\n", f);
    fclose(f);
}
