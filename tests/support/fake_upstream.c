/* The fake backend connection (fake_upstream.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/support/fake_upstream.h"

struct upstream fake_ups[FAKE_UPSTREAMS];
int fake_n_acquired;
bool fake_refuse_acquire;
bool fake_first_pooled;
size_t fake_out_len;
int fake_n_purged;

void fake_upstream_reset(void)
{
    for (int i = 0; i < FAKE_UPSTREAMS; i++)
        if (fake_ups[i].out != NULL)
            evbuffer_free(fake_ups[i].out);
    memset(fake_ups, 0, sizeof fake_ups);
    fake_n_acquired = fake_n_purged = 0;
    fake_refuse_acquire = fake_first_pooled = false;
    fake_out_len = 0;
}

char *fake_upstream_sent(const struct upstream *u)
{
    size_t n = u->out != NULL ? evbuffer_get_length(u->out) : 0;
    char *s = malloc(n + 1);
    if (s == NULL)
        return NULL;
    if (n > 0)
        evbuffer_copyout(u->out, s, n);
    s[n] = '\0';
    return s;
}

struct upstream *upstream_acquire(struct upstream_pool *p, const struct upstream_handler *h,
                                  void *arg, unsigned flags, const char *identity,
                                  struct upstream_trail *trail)
{
    (void)p;
    (void)flags;
    (void)identity;
    if (fake_refuse_acquire || fake_n_acquired >= FAKE_UPSTREAMS)
        return NULL;
    struct upstream *u = &fake_ups[fake_n_acquired];
    struct evbuffer *out = evbuffer_new();
    if (out == NULL)
        return NULL; /* as the real pool, out of memory: no connection */
    *u = (struct upstream){
        .h = h, .arg = arg, .out = out, .reused = fake_n_acquired == 0 && fake_first_pooled};
    fake_n_acquired++;
    if (trail->n < UPSTREAM_TRAIL_MAX) {
        trail->addr[trail->n] = 0;
        trail->how[trail->n] = UP_USED;
        trail->n++;
    }
    return u;
}

void upstream_write(struct upstream *u, const void *data, size_t len)
{
    if (u->failed || len == 0)
        return;
    if (data == NULL || evbuffer_add(u->out, data, len) < 0)
        u->failed = true;
}

void upstream_write_buffer(struct upstream *u, struct evbuffer *buf)
{
    if (u->failed || evbuffer_add_buffer(u->out, buf) < 0) {
        evbuffer_drain(buf, evbuffer_get_length(buf));
        u->failed = true;
    }
}

size_t upstream_output_length(const struct upstream *u)
{
    return fake_out_len ? fake_out_len : evbuffer_get_length(u->out);
}

void upstream_read_pause(struct upstream *u, bool paused)
{
    u->paused = paused;
}

bool upstream_reused(const struct upstream *u)
{
    return u->reused;
}

bool upstream_connected(const struct upstream *u)
{
    (void)u;
    return true;
}

const unsigned char *upstream_binding(const struct upstream *u, size_t *len)
{
    (void)u;
    *len = 0;
    return NULL;
}

void upstream_release(struct upstream *u, bool reusable)
{
    u->released = true;
    u->reusable = reusable;
}

void upstream_purge_siblings(struct upstream *u)
{
    (void)u;
    fake_n_purged++;
}

const char *upstream_host_header(const struct upstream *u)
{
    (void)u;
    return "eas.test"; /* the fixture's one server */
}

const char *upstream_trail_text(const struct upstream_trail *t, const struct backend_set *ba,
                                char *buf, size_t len)
{
    (void)ba;
    snprintf(buf, len, "fake*%u", t->n);
    return buf;
}
