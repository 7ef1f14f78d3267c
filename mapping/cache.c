/* The identity cache, shared by every worker: certificate SHA-256 → mapping
 * result. Sharded so that workers rarely meet on a lock; each shard is a
 * chained hash table with an LRU list of its ready entries. A key being
 * resolved has a PENDING entry: later requests for it wait behind the first
 * (single flight) instead of asking the directory again. */
#include <stdatomic.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mapping/internal.h"
#include "metrics/metrics.h"

#define SHARDS_MAX 16
#define KEY_MAX 64 /* hex SHA-256 */

struct centry {
    char key[KEY_MAX + 1];
    uint64_t hash;
    bool pending;
    uint64_t expires_ms;
    struct map_result result;
    struct map_waiter *waiters; /* pending only */
    struct centry *next_hash;
    struct centry *lru_prev, *lru_next; /* ready only; head = most recently used */
};

struct shard {
    pthread_mutex_t lock;
    struct centry **buckets;
    size_t n_buckets; /* power of two */
    size_t n_ready;
    size_t cap;
    struct centry *lru_head, *lru_tail;
};

struct map_cache {
    _Atomic unsigned refs; /* map_cache_hold */
    struct shard shards[SHARDS_MAX];
    size_t n_shards;
    uint64_t ttl_ms, negative_ttl_ms;
    uint64_t (*clock)(void *);
    void *clock_arg;
};

static uint64_t monotonic_ms(void *arg)
{
    struct timespec ts;
    (void)arg;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* FNV-1a, then a 64-bit finalizer so that keys differing in their last
 * characters still spread over shards (high bits) and buckets (low bits). */
static uint64_t key_hash(const char *key)
{
    uint64_t h = 1469598103934665603ull;
    for (; *key != '\0'; key++)
        h = (h ^ (unsigned char)*key) * 1099511628211ull;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

struct map_cache *map_cache_new_custom(size_t entries, uint64_t ttl_ms, uint64_t negative_ttl_ms,
                                       size_t shards, uint64_t (*clock)(void *), void *clock_arg)
{
    struct map_cache *mc;

    if (entries == 0 || shards == 0 || shards > SHARDS_MAX)
        return NULL;
    if (shards > entries)
        shards = entries; /* every shard holds at least one; the total stays <= entries */
    mc = calloc(1, sizeof(*mc));
    if (mc == NULL)
        return NULL;
    atomic_init(&mc->refs, 1);
    mc->ttl_ms = ttl_ms;
    mc->negative_ttl_ms = negative_ttl_ms;
    mc->clock = clock ? clock : monotonic_ms;
    mc->clock_arg = clock_arg;
    for (size_t i = 0; i < shards; i++) {
        struct shard *s = &mc->shards[i];
        s->cap = entries / shards;
        /* Room for the entries plus as many pending ones, up to a sane start. */
        s->n_buckets = 64;
        while (s->n_buckets < s->cap && s->n_buckets < (1u << 20))
            s->n_buckets *= 2;
        s->buckets = calloc(s->n_buckets, sizeof(*s->buckets));
        if (s->buckets == NULL || pthread_mutex_init(&s->lock, NULL) != 0) {
            free(s->buckets);
            s->buckets = NULL;
            map_cache_free(mc);
            return NULL;
        }
        mc->n_shards++;
    }
    return mc;
}

struct map_cache *map_cache_new(size_t entries, uint64_t ttl_ms, uint64_t negative_ttl_ms)
{
    return map_cache_new_custom(entries, ttl_ms, negative_ttl_ms, SHARDS_MAX, NULL, NULL);
}

struct map_cache *map_cache_hold(struct map_cache *mc)
{
    atomic_fetch_add_explicit(&mc->refs, 1, memory_order_relaxed);
    return mc;
}

void map_cache_free(struct map_cache *mc)
{
    if (mc == NULL || atomic_fetch_sub_explicit(&mc->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (size_t i = 0; i < mc->n_shards; i++) {
        struct shard *s = &mc->shards[i];
        for (size_t b = 0; b < s->n_buckets; b++) {
            struct centry *e = s->buckets[b];
            while (e != NULL) {
                struct centry *next = e->next_hash;
                map_result_purge(&e->result);
                free(e);
                e = next;
            }
        }
        free(s->buckets);
        metrics_gauge_add(MG_CACHE_ENTRIES, -(int64_t)s->n_ready);
        pthread_mutex_destroy(&s->lock);
    }
    free(mc);
}

static struct shard *shard_of(struct map_cache *mc, uint64_t hash)
{
    return &mc->shards[(hash >> 32) % mc->n_shards];
}

static struct centry **slot_of(struct shard *s, const char *key, uint64_t hash)
{
    struct centry **p = &s->buckets[hash & (s->n_buckets - 1)];
    while (*p != NULL && ((*p)->hash != hash || strcmp((*p)->key, key) != 0))
        p = &(*p)->next_hash;
    return p;
}

static void lru_unlink(struct shard *s, struct centry *e)
{
    if (e->lru_prev)
        e->lru_prev->lru_next = e->lru_next;
    else
        s->lru_head = e->lru_next;
    if (e->lru_next)
        e->lru_next->lru_prev = e->lru_prev;
    else
        s->lru_tail = e->lru_prev;
    e->lru_prev = e->lru_next = NULL;
}

static void lru_push(struct shard *s, struct centry *e)
{
    e->lru_prev = NULL;
    e->lru_next = s->lru_head;
    if (s->lru_head)
        s->lru_head->lru_prev = e;
    s->lru_head = e;
    if (s->lru_tail == NULL)
        s->lru_tail = e;
}

/* Unlinks and frees the ready entry <e>. Shard lock held. */
static void drop_ready(struct shard *s, struct centry *e)
{
    struct centry **p = slot_of(s, e->key, e->hash);
    if (*p == e)
        *p = e->next_hash;
    lru_unlink(s, e);
    s->n_ready--;
    metrics_gauge_add(MG_CACHE_ENTRIES, -1);
    map_result_purge(&e->result);
    free(e);
}

enum map_cache_state map_cache_get(struct map_cache *mc, const char *key, struct map_result *out,
                                   struct map_waiter *w)
{
    uint64_t h = key_hash(key);
    struct shard *s = shard_of(mc, h);
    struct centry **p, *e;
    enum map_cache_state st;

    memset(out, 0, sizeof(*out));
    if (strlen(key) > KEY_MAX)
        return MC_MISS_OWNER; /* not a digest: resolve, and put will not store it */
    pthread_mutex_lock(&s->lock);
    p = slot_of(s, key, h);
    e = *p;
    if (e != NULL && !e->pending && mc->clock(mc->clock_arg) >= e->expires_ms) {
        drop_ready(s, e);
        e = NULL;
        p = slot_of(s, key, h);
    }
    if (e != NULL && e->pending) {
        w->next = e->waiters;
        e->waiters = w;
        st = MC_WAIT;
    } else if (e != NULL) {
        lru_unlink(s, e);
        lru_push(s, e);
        st = MC_HIT;
        if (map_result_copy(out, &e->result) != 0) {
            /* Cannot hand out a copy: answer as the directory being down (not cached). */
            out->reason = R_DIRECTORY_UNAVAILABLE;
        }
    } else {
        st = MC_MISS_OWNER;
        e = calloc(1, sizeof(*e));
        if (e != NULL) {
            memcpy(e->key, key, strlen(key) + 1);
            e->hash = h;
            e->pending = true;
            *p = e;
        }
        /* Without memory there is no pending entry: the owner resolves alone. */
    }
    pthread_mutex_unlock(&s->lock);
    metrics_inc(st == MC_HIT ? MT_CACHE_HIT : st == MC_WAIT ? MT_CACHE_WAIT : MT_CACHE_MISS);
    return st;
}

void map_cache_put(struct map_cache *mc, const char *key, const struct map_result *r)
{
    map_cache_put_ttl(mc, key, r, UINT64_MAX);
}

void map_cache_put_ttl(struct map_cache *mc, const char *key, const struct map_result *r,
                       uint64_t ttl_max)
{
    uint64_t h = key_hash(key);
    struct shard *s = shard_of(mc, h);
    struct centry **p, *e;
    struct map_waiter *waiters = NULL;
    uint64_t ttl = r->reason == R_NONE ? mc->ttl_ms : mc->negative_ttl_ms;
    if (ttl > ttl_max)
        ttl = ttl_max;
    bool keep = r->reason != R_DIRECTORY_UNAVAILABLE && ttl > 0 && strlen(key) <= KEY_MAX;

    pthread_mutex_lock(&s->lock);
    p = slot_of(s, key, h);
    e = *p;
    if (e != NULL && e->pending) {
        waiters = e->waiters;
        e->waiters = NULL;
    } else if (e != NULL) {
        drop_ready(s, e); /* a stale copy: the new result replaces it */
        p = slot_of(s, key, h);
        e = NULL;
    }
    if (keep && e == NULL) {
        e = calloc(1, sizeof(*e));
        if (e != NULL) {
            memcpy(e->key, key, strlen(key) + 1);
            e->hash = h;
            e->pending = true;
            *p = e;
        }
    }
    if (e != NULL && keep && map_result_copy(&e->result, r) == 0) {
        e->pending = false;
        e->expires_ms = mc->clock(mc->clock_arg) + ttl;
        lru_push(s, e);
        s->n_ready++;
        metrics_gauge_add(MG_CACHE_ENTRIES, 1);
        while (s->n_ready > s->cap)
            drop_ready(s, s->lru_tail);
    } else if (e != NULL) {
        *slot_of(s, key, h) = e->next_hash;
        free(e);
    }
    pthread_mutex_unlock(&s->lock);

    /* Outside the lock: a waiter's wake may take other locks (its loop's). */
    while (waiters != NULL) {
        struct map_waiter *w = waiters;
        waiters = w->next; /* before wake: <w> may be gone once woken */
        w->next = NULL;
        if (map_result_copy(&w->result, r) != 0)
            w->result.reason = R_DIRECTORY_UNAVAILABLE;
        w->wake(w);
    }
}

bool map_cache_unwait(struct map_cache *mc, const char *key, struct map_waiter *w)
{
    uint64_t h = key_hash(key);
    struct shard *s = shard_of(mc, h);
    struct centry *e;
    bool found = false;

    pthread_mutex_lock(&s->lock);
    e = *slot_of(s, key, h);
    if (e != NULL && e->pending) {
        for (struct map_waiter **p = &e->waiters; *p != NULL; p = &(*p)->next) {
            if (*p == w) {
                *p = w->next;
                w->next = NULL;
                found = true;
                break;
            }
        }
    }
    pthread_mutex_unlock(&s->lock);
    return found;
}

size_t map_cache_count(struct map_cache *mc)
{
    size_t n = 0;
    for (size_t i = 0; i < mc->n_shards; i++) {
        pthread_mutex_lock(&mc->shards[i].lock);
        n += mc->shards[i].n_ready;
        pthread_mutex_unlock(&mc->shards[i].lock);
    }
    return n;
}
