/* The allocator hooks of allocation-failure tests (alloc_hooks.h). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <openssl/crypto.h>

#include "tests/support/alloc_hooks.h"

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
void __real_free(void *p);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_realloc(void *p, size_t n);
void __wrap_free(void *p);
char *__wrap_strdup(const char *s);
char *__wrap_strndup(const char *s, size_t n);

struct alloc_hooks alloc_hooks;

/* Blocks allocated while armed and not yet freed: an open-addressing set. */
#define LIVE_SLOTS 65536
static void *live[LIVE_SLOTS];
#define TOMB ((void *)1)

static size_t slot_of(const void *p)
{
    return (size_t)(((uintptr_t)p >> 4) * 2654435761u) % LIVE_SLOTS;
}

static void live_add(void *p)
{
    size_t i = slot_of(p);
    while (live[i] != NULL && live[i] != TOMB)
        i = (i + 1) % LIVE_SLOTS;
    live[i] = p;
    alloc_hooks.n_live++;
}

/* Forgets <p>; whether it was counted. */
static bool live_del(void *p)
{
    if (p == NULL || alloc_hooks.n_live == 0)
        return false;
    for (size_t i = slot_of(p), k = 0; live[i] != NULL && k < LIVE_SLOTS;
         i = (i + 1) % LIVE_SLOTS, k++) {
        if (live[i] == p) {
            live[i] = TOMB;
            alloc_hooks.n_live--;
            return true;
        }
    }
    return false;
}

void alloc_hooks_arm(long fail_at)
{
    memset(live, 0, sizeof live);
    alloc_hooks = (struct alloc_hooks){.armed = true, .fail_at = fail_at};
}

bool alloc_hooks_pause(void)
{
    bool was = alloc_hooks.armed;
    alloc_hooks.armed = false;
    return was;
}

void alloc_hooks_resume(bool armed)
{
    alloc_hooks.armed = armed;
}

/* Whether this allocation is the one to fail. */
static bool fail_now(void)
{
    if (!alloc_hooks.armed)
        return false;
    alloc_hooks.n_allocs++;
    if (alloc_hooks.n_allocs == alloc_hooks.fail_at) {
        alloc_hooks.n_failed++;
        return true;
    }
    return false;
}

void *__wrap_malloc(size_t n)
{
    if (fail_now())
        return NULL;
    void *p = __real_malloc(n);
    if (p != NULL && alloc_hooks.armed)
        live_add(p);
    return p;
}

void *__wrap_calloc(size_t n, size_t size)
{
    if (fail_now())
        return NULL;
    void *p = __real_calloc(n, size);
    if (p != NULL && alloc_hooks.armed)
        live_add(p);
    return p;
}

void *__wrap_realloc(void *old, size_t n)
{
    if (fail_now())
        return NULL; /* <old> stays as it was */
    void *p = __real_realloc(old, n);
    if (p != NULL) {
        bool was_live = live_del(old);
        if (alloc_hooks.armed || was_live)
            live_add(p);
    }
    return p;
}

void __wrap_free(void *p)
{
    live_del(p);
    __real_free(p);
}

char *__wrap_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = __wrap_malloc(n);
    if (p != NULL)
        memcpy(p, s, n);
    return p;
}

char *__wrap_strndup(const char *s, size_t n)
{
    size_t len = strnlen(s, n);
    char *p = __wrap_malloc(len + 1);
    if (p != NULL) {
        memcpy(p, s, len);
        p[len] = '\0';
    }
    return p;
}

/* OpenSSL's, counted apart as well. */
static void *crypto_malloc(size_t n, const char *file, int line)
{
    if (alloc_hooks.armed)
        alloc_hooks.n_openssl++;
    return __wrap_malloc(n);
}

static void *crypto_realloc(void *p, size_t n, const char *file, int line)
{
    if (p != NULL && n == 0) {
        __wrap_free(p); /* as OpenSSL's own CRYPTO_realloc */
        return NULL;
    }
    if (alloc_hooks.armed)
        alloc_hooks.n_openssl++;
    return __wrap_realloc(p, n);
}

static void crypto_free(void *p, const char *file, int line)
{
    __wrap_free(p);
}

int alloc_hooks_install(bool openssl)
{
    if (openssl && CRYPTO_set_mem_functions(crypto_malloc, crypto_realloc, crypto_free) != 1)
        return -1;
    event_set_mem_functions(__wrap_malloc, __wrap_realloc, __wrap_free);
    return 0;
}
