/* A fake backend connection for tests that drive proxy/stream.c alone: this
 * file defines the upstream_* functions the stream calls, so a test (or
 * fuzz harness) that links it as an object takes them instead of
 * proxy/upstream.c, and plays the backend by calling the stream's upstream
 * callbacks through fake_ups[i].h. Link it as a source of the executable, not
 * from a library: the linker would otherwise take proxy/upstream.o from
 * cm_proxy for the same symbols. */
#ifndef CM_TESTS_FAKE_UPSTREAM_H
#define CM_TESTS_FAKE_UPSTREAM_H

#include <stdbool.h>
#include <stddef.h>

#include <event2/buffer.h>

#include "proxy/upstream.h"

#define FAKE_UPSTREAMS 8

struct upstream {
    const struct upstream_handler *h;
    void *arg;
    struct evbuffer *out; /* what the stream sent to "the backend" */
    bool reused, released, reusable, paused;
    bool failed; /* a write found no memory: the real one then reports an error */
};

extern struct upstream fake_ups[FAKE_UPSTREAMS];
extern int fake_n_acquired;      /* upstream_acquire calls that returned one */
extern bool fake_refuse_acquire; /* upstream_acquire fails (no backend) */
extern bool fake_first_pooled;   /* the first connection comes from the pool */
extern size_t fake_out_len;      /* what upstream_output_length says, when not 0 */
extern int fake_n_purged;        /* upstream_purge_siblings calls */

/* Frees what the fakes hold and zeroes every setting above. */
void fake_upstream_reset(void);

/* What the stream sent to <u>, NUL-terminated; the caller frees it; NULL
 * when out of memory. */
char *fake_upstream_sent(const struct upstream *u);

#endif
