/* Allocation-failure injection for unit tests (tests/unit/proxy/test_*_alloc.c).
 * The hooks take malloc, calloc, realloc, free, strdup and strndup of the
 * project's own code (the executable is linked with -Wl,--wrap for them:
 * tests/CMakeLists.txt), libevent's allocations (event_set_mem_functions)
 * and, when asked, OpenSSL's (CRYPTO_set_mem_functions). While armed they
 * count allocations, fail the one asked for, and keep the set of blocks
 * allocated and not yet freed. One thread only. Link alloc_hooks.c as a
 * source of the executable, like the wrapped code. */
#ifndef CM_TESTS_ALLOC_HOOKS_H
#define CM_TESTS_ALLOC_HOOKS_H

#include <stdbool.h>

struct alloc_hooks {
    bool armed;     /* counting: the request runs */
    long n_allocs;  /* allocations while armed */
    long n_openssl; /* ... of them OpenSSL's */
    long fail_at;   /* the one that fails; 0: none */
    long n_failed;  /* how many were failed (0 or 1) */
    long n_live;    /* blocks allocated while armed and not yet freed */
};
extern struct alloc_hooks alloc_hooks;

/* Sends libevent's allocations, and with <openssl> OpenSSL's, through the
 * hooks. First thing in main: before either library allocates anything.
 * 0, or -1 when OpenSSL had allocated already. */
int alloc_hooks_install(bool openssl);

/* Forgets every count and live block, then arms the hooks with allocation
 * <fail_at> failing (0: none). */
void alloc_hooks_arm(long fail_at);

/* Stops counting (the live set still forgets what is freed); returns whether
 * the hooks were armed, for alloc_hooks_resume(). */
bool alloc_hooks_pause(void);
void alloc_hooks_resume(bool armed);

#endif
