/* The shared identity cache on Redis. States: DOWN (no connection, a retry
 * timer armed), HELLO (connecting, then AUTH / SELECT / PING), UP. Only UP
 * takes requests: in any other state a get fails fast and the mapper asks
 * the directory, so no request ever waits for a connection. A get waits at
 * most shared_cache_timeout; a few of those in a row and the connection is
 * taken for dead (a stopped Redis still accepts TCP) and made again.
 *
 * hiredis owns each command's privdata until it calls the reply callback,
 * which it always does, with NULL when the connection goes: a get that
 * timed out or was cancelled is only marked done, and freed there. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "common/log.h"
#include "shcache/shcache.h"

#define KEY_PREFIX "certmapd:v1:"
#define RKEY_MAX (sizeof(KEY_PREFIX) + 64 + 1 + 64 + 1)
#define RETRY_FIRST_MS 100
#define RETRY_MAX_MS 5000
#define HELLO_TIMEOUT_MS 1000
#define TIMEOUTS_DEAD 3
/* Commands written but not answered: past this Redis is not keeping up, and
 * more would only grow hiredis's buffers. */
#define INFLIGHT_MAX 1024

enum shc_state { SHC_DOWN, SHC_HELLO, SHC_UP };

struct shc {
    struct map_shared iface;
    const struct conf *c;
    struct event_base *base;
    redisAsyncContext *ac;
    enum shc_state state;
    char where[80]; /* "127.0.0.1:6379" for messages */
    char prefix[sizeof(KEY_PREFIX) + 64 + 1];
    unsigned char *key; /* HMAC key */
    size_t key_len;
    char *password;
    size_t password_len;
    struct event *retry_ev; /* DOWN: the next connection attempt */
    struct event *hello_ev; /* HELLO: gives up on a connection that does not answer */
    uint64_t retry_ms;
    unsigned inflight;
    unsigned timeouts_in_row;
    bool outage_logged;
};

struct shc_get {
    struct shc *s;
    map_shared_cb cb;
    void *arg;
    struct event *timer;
    bool done; /* answered, timed out or cancelled: the reply is only freed */
    char rkey[RKEY_MAX];
};

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void ms_tv(uint64_t ms, struct timeval *tv)
{
    tv->tv_sec = (time_t)(ms / 1000);
    tv->tv_usec = (suseconds_t)(ms % 1000) * 1000;
}

static void shc_connect(struct shc *s);

/* Once per outage: the first failure is a warning, the others are not news. */
static void outage(struct shc *s, const char *why)
{
    if (!s->outage_logged)
        log_warn("shared cache: redis at %s: %s; mapping goes on with the local cache and the "
                 "directory, reconnecting",
                 s->where, why);
    else
        log_debug("shared cache: redis at %s: %s", s->where, why);
    s->outage_logged = true;
}

static void retry_later(struct shc *s)
{
    struct timeval tv;
    s->state = SHC_DOWN;
    event_del(s->hello_ev);
    ms_tv(s->retry_ms, &tv);
    event_add(s->retry_ev, &tv);
    s->retry_ms = s->retry_ms * 2 > RETRY_MAX_MS ? RETRY_MAX_MS : s->retry_ms * 2;
}

/* Drops the connection from outside hiredis's callbacks: pending commands
 * are called back with NULL (gets not yet done answer a miss). */
static void drop(struct shc *s, const char *why)
{
    redisAsyncContext *ac = s->ac;
    s->ac = NULL;
    outage(s, why);
    retry_later(s);
    if (ac != NULL)
        redisAsyncFree(ac);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct shc *s = ac->data;
    if (s == NULL || s->ac != ac)
        return;   /* dropped by us (drop, shc_free) */
    s->ac = NULL; /* hiredis frees it after this call */
    outage(s, status == REDIS_OK ? "connection closed" : ac->errstr);
    retry_later(s);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct shc *s = ac->data;
    if (s == NULL || s->ac != ac || status == REDIS_OK)
        return;
    /* hiredis frees a context whose connect failed, without on_disconnect. */
    s->ac = NULL;
    outage(s, ac->errstr);
    retry_later(s);
}

/* Replies to AUTH, SELECT and PING, in order; privdata names the step. */
static void on_hello(redisAsyncContext *ac, void *r, void *privdata)
{
    struct shc *s = ac->data;
    redisReply *reply = r;
    const char *step = privdata;
    char why[160];

    if (s == NULL || s->ac != ac || s->state != SHC_HELLO)
        return;
    if (reply == NULL) {
        /* The connection is going (hiredis frees it after its callbacks). */
        s->ac = NULL;
        outage(s, "connection lost");
        retry_later(s);
        return;
    }
    if (reply->type == REDIS_REPLY_ERROR) {
        snprintf(why, sizeof why, "%s refused: %.100s", step, reply->str != NULL ? reply->str : "");
        s->ac = NULL;
        outage(s, why);
        retry_later(s);
        redisAsyncDisconnect(ac); /* from a callback: hiredis frees it after */
        return;
    }
    if (strcmp(step, "PING") != 0)
        return;
    s->state = SHC_UP;
    s->retry_ms = RETRY_FIRST_MS;
    s->timeouts_in_row = 0;
    event_del(s->hello_ev);
    if (s->outage_logged)
        log_info("shared cache: redis at %s answers again", s->where);
    else
        log_debug("shared cache: connected to redis at %s", s->where);
    s->outage_logged = false;
}

static void on_hello_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct shc *s = arg;
    if (s->state == SHC_HELLO)
        drop(s, "no answer to the connection within 1 s");
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    shc_connect(arg);
}

static void shc_connect(struct shc *s)
{
    struct timeval tv;
    redisAsyncContext *ac =
        redisAsyncConnect(s->c->shared_cache_host, (int)s->c->shared_cache_port);
    if (ac == NULL) {
        outage(s, "out of memory");
        retry_later(s);
        return;
    }
    if (ac->err) {
        char why[160];
        snprintf(why, sizeof why, "%.150s", ac->errstr);
        redisAsyncFree(ac);
        outage(s, why);
        retry_later(s);
        return;
    }
    ac->data = s;
    if (redisLibeventAttach(ac, s->base) != REDIS_OK) {
        redisAsyncFree(ac);
        outage(s, "cannot attach to the event loop");
        retry_later(s);
        return;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    s->ac = ac;
    s->state = SHC_HELLO;
    /* Written once connected, answered in order. */
    if (s->password != NULL)
        redisAsyncCommand(ac, on_hello, (void *)"AUTH", "AUTH %b", s->password, s->password_len);
    if (s->c->shared_cache_db != 0)
        redisAsyncCommand(ac, on_hello, (void *)"SELECT", "SELECT %u", s->c->shared_cache_db);
    redisAsyncCommand(ac, on_hello, (void *)"PING", "PING");
    ms_tv(HELLO_TIMEOUT_MS, &tv);
    event_add(s->hello_ev, &tv);
}

/* ---- get / put ---- */

static void get_free(struct shc_get *g)
{
    if (g->timer != NULL)
        event_free(g->timer);
    free(g);
}

static void on_get_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    struct shc_get *g = privdata;
    struct shc *s = g->s;
    redisReply *reply = r;
    struct map_result res;
    uint64_t ttl = 0;
    const char *why = NULL;
    bool hit = false;

    s->inflight--;
    if (g->done) {
        get_free(g);
        return;
    }
    g->done = true;
    event_del(g->timer);
    if (reply != NULL)
        s->timeouts_in_row = 0;
    if (reply != NULL && reply->type == REDIS_REPLY_STRING && reply->len > 0) {
        hit = map_shared_decode(reply->str, reply->len, g->rkey, s->key, s->key_len, wall_ms(),
                                &res, &ttl, &why) == 0;
        if (!hit)
            log_debug("shared cache: %.16s: value ignored: %s", g->rkey + strlen(s->prefix), why);
    } else if (reply != NULL && reply->type == REDIS_REPLY_ERROR) {
        log_debug("shared cache: GETRANGE refused: %.100s", reply->str != NULL ? reply->str : "");
    }
    g->cb(g->arg, hit ? &res : NULL, ttl);
    if (hit)
        map_result_purge(&res);
    get_free(g);
}

static void on_get_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct shc_get *g = arg;
    struct shc *s = g->s;

    g->done = true;
    log_debug("shared cache: %.16s: no answer within %llu ms", g->rkey + strlen(s->prefix),
              (unsigned long long)s->c->shared_cache_timeout_ms);
    g->cb(g->arg, NULL, 0);
    /* <g> stays for its reply. A Redis that answers nothing (stopped, or
     * swamped) is dropped, so that the next requests fail fast. */
    if (++s->timeouts_in_row >= TIMEOUTS_DEAD && s->state == SHC_UP)
        drop(s, "no answer in time to several requests");
}

static void *shc_get(void *ctx, const char *sha256, map_shared_cb cb, void *arg)
{
    struct shc *s = ctx;
    struct shc_get *g;
    struct timeval tv;

    if (s->state != SHC_UP || s->inflight >= INFLIGHT_MAX || strlen(sha256) != 64)
        return NULL;
    g = calloc(1, sizeof *g);
    if (g == NULL)
        return NULL;
    g->s = s;
    g->cb = cb;
    g->arg = arg;
    snprintf(g->rkey, sizeof g->rkey, "%s%s", s->prefix, sha256);
    g->timer = evtimer_new(s->base, on_get_timeout, g);
    if (g->timer == NULL ||
        /* GETRANGE, not GET: whatever was planted there, no more than one
         * byte past the longest value is read (a missing key reads ""). */
        redisAsyncCommand(s->ac, on_get_reply, g, "GETRANGE %s 0 %d", g->rkey,
                          MAP_SHARED_VALUE_MAX) != REDIS_OK) {
        get_free(g);
        return NULL;
    }
    s->inflight++;
    ms_tv(s->c->shared_cache_timeout_ms, &tv);
    event_add(g->timer, &tv);
    return g;
}

static void shc_cancel(void *ctx, void *handle)
{
    struct shc_get *g = handle;
    g->done = true;
    event_del(g->timer);
}

static void on_put_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    struct shc *s = privdata;
    redisReply *reply = r;
    s->inflight--;
    if (reply != NULL && reply->type == REDIS_REPLY_ERROR)
        log_debug("shared cache: SET refused: %.100s", reply->str != NULL ? reply->str : "");
}

static void shc_put(void *ctx, const char *sha256, const struct map_result *r, uint64_t ttl_ms)
{
    struct shc *s = ctx;
    char rkey[RKEY_MAX];
    size_t len;
    char *val;

    if (s->state != SHC_UP || s->inflight >= INFLIGHT_MAX || strlen(sha256) != 64 || ttl_ms == 0)
        return;
    snprintf(rkey, sizeof rkey, "%s%s", s->prefix, sha256);
    val = map_shared_encode(r, wall_ms() + ttl_ms, rkey, s->key, s->key_len, &len);
    if (val == NULL)
        return;
    if (redisAsyncCommand(s->ac, on_put_reply, s, "SET %s %b PX %llu", rkey, val, len,
                          (unsigned long long)ttl_ms) == REDIS_OK)
        s->inflight++;
    free(val);
}

/* ---- life ---- */

struct shc *shc_open(const struct conf *c, struct event_base *base, char *err, size_t errlen)
{
    char why[256], fp[65];
    struct shc *s = calloc(1, sizeof *s);

    if (s == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->c = c;
    s->base = base;
    s->retry_ms = RETRY_FIRST_MS;
    s->iface = (struct map_shared){.ctx = s, .get = shc_get, .cancel = shc_cancel, .put = shc_put};
    snprintf(s->where, sizeof s->where, strchr(c->shared_cache_host, ':') ? "[%s]:%u" : "%s:%u",
             c->shared_cache_host, c->shared_cache_port);
    if (map_shared_fingerprint(c, fp, why, sizeof why) < 0) {
        snprintf(err, errlen, "[mapping] shared_cache: %s", why);
        goto fail;
    }
    snprintf(s->prefix, sizeof s->prefix, "%s%s:", KEY_PREFIX, fp);
    s->key =
        (unsigned char *)conf_secret_read(c->shared_cache_key_file, &s->key_len, why, sizeof why);
    if (s->key == NULL) {
        snprintf(err, errlen, "[mapping] shared_cache_key_file: %s", why);
        goto fail;
    }
    if (c->shared_cache_password_file != NULL) {
        s->password =
            conf_secret_read(c->shared_cache_password_file, &s->password_len, why, sizeof why);
        if (s->password == NULL) {
            snprintf(err, errlen, "[mapping] shared_cache_password_file: %s", why);
            goto fail;
        }
    }
    s->retry_ev = evtimer_new(base, on_retry, s);
    s->hello_ev = evtimer_new(base, on_hello_timeout, s);
    if (s->retry_ev == NULL || s->hello_ev == NULL) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    shc_connect(s);
    return s;
fail:
    shc_free(s);
    return NULL;
}

const struct map_shared *shc_shared(struct shc *s)
{
    return &s->iface;
}

void shc_free(struct shc *s)
{
    if (s == NULL)
        return;
    if (s->ac != NULL) {
        redisAsyncContext *ac = s->ac;
        s->ac = NULL;
        s->state = SHC_DOWN;
        redisAsyncFree(ac); /* calls back every command: the gets free themselves */
    }
    if (s->retry_ev != NULL)
        event_free(s->retry_ev);
    if (s->hello_ev != NULL)
        event_free(s->hello_ev);
    if (s->key != NULL)
        conf_secret_free((char *)s->key, s->key_len);
    if (s->password != NULL)
        conf_secret_free(s->password, s->password_len);
    free(s);
}
