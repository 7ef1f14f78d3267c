/* Counter blocks, one per attached thread plus a global one, and the
 * Prometheus text exposition of their sums (metrics.h says why so). */
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "metrics/metrics.h"

/* (status, reason) slots per block: a worker sees a few dozen pairs at most. */
#define REQ_SLOTS 128
/* Upper bounds of the directory search histogram, in seconds. */
static const double dir_bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                    0.25,  0.5,    1,     2.5,  5,     10};
#define DIR_BUCKETS (sizeof dir_bounds / sizeof dir_bounds[0])

struct req_slot {
    _Atomic uint32_t key; /* 0: free; else (status << 8 | reason) + 1 */
    _Atomic uint64_t n;
};

struct metrics_block {
    _Atomic uint64_t c[MT_MAX];
    _Atomic int64_t g[MG_MAX];
    _Atomic uint64_t dir_bucket[DIR_BUCKETS + 1]; /* not cumulative; the last is +Inf */
    _Atomic uint64_t dir_sum_us;
    struct req_slot req[REQ_SLOTS];
    struct metrics_block *next;
};

static struct metrics_block global_block;
static _Thread_local struct metrics_block *self;
static pthread_mutex_t blocks_lock = PTHREAD_MUTEX_INITIALIZER;
static struct metrics_block *blocks; /* attached threads' blocks, never freed before exit */

static struct {
    pthread_mutex_t lock;
    size_t n;
    struct {
        char issuer[256];
        int64_t last_update, next_update;
    } e[METRICS_CRL_MAX];
} crls = {.lock = PTHREAD_MUTEX_INITIALIZER};

static _Atomic int64_t last_reload_ok; /* Unix time of the last successful reload, 0: none */

int metrics_thread_attach(void)
{
    if (self != NULL)
        return 0;
    struct metrics_block *b = calloc(1, sizeof *b);
    if (b == NULL)
        return -1;
    pthread_mutex_lock(&blocks_lock);
    b->next = blocks;
    blocks = b;
    pthread_mutex_unlock(&blocks_lock);
    self = b;
    return 0;
}

/* The owner of a block is its only writer: a load and a store, no locked
 * instruction; the scraper's loads see whole values. */
static inline void own_add_u(_Atomic uint64_t *p, uint64_t n)
{
    atomic_store_explicit(p, atomic_load_explicit(p, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

static inline void add_u(struct metrics_block *b, _Atomic uint64_t *p, uint64_t n)
{
    if (b == &global_block)
        atomic_fetch_add_explicit(p, n, memory_order_relaxed);
    else
        own_add_u(p, n);
}

static inline struct metrics_block *mine(void)
{
    return self != NULL ? self : &global_block;
}

void metrics_inc(enum metrics_counter c)
{
    if ((unsigned)c >= MT_MAX)
        return;
    struct metrics_block *b = mine();
    add_u(b, &b->c[c], 1);
}

void metrics_gauge_add(enum metrics_gauge g, int64_t delta)
{
    if ((unsigned)g >= MG_MAX)
        return;
    struct metrics_block *b = mine();
    if (b == &global_block)
        atomic_fetch_add_explicit(&b->g[g], delta, memory_order_relaxed);
    else
        atomic_store_explicit(&b->g[g],
                              atomic_load_explicit(&b->g[g], memory_order_relaxed) + delta,
                              memory_order_relaxed);
}

static uint32_t req_key(int status, enum reason r)
{
    if (status < 100 || status > 999)
        status = 0;
    if ((unsigned)r >= R_MAX)
        r = R_MAX; /* "internal": reason_name's answer for it */
    return ((uint32_t)status << 8 | (uint32_t)r) + 1;
}

/* The slot of <key> in <slots> (<n> of them, a power of two), claimed if new;
 * NULL when every slot holds another key. Safe with several writers. */
static struct req_slot *req_slot(struct req_slot *slots, size_t n, uint32_t key)
{
    size_t i = (key * 2654435761u) & (n - 1);
    for (size_t probe = 0; probe < n; probe++, i = (i + 1) & (n - 1)) {
        uint32_t k = atomic_load_explicit(&slots[i].key, memory_order_acquire);
        if (k == key)
            return &slots[i];
        if (k == 0) {
            uint32_t expected = 0;
            if (atomic_compare_exchange_strong_explicit(
                    &slots[i].key, &expected, key, memory_order_acq_rel, memory_order_acquire) ||
                expected == key)
                return &slots[i];
        }
    }
    return NULL;
}

void metrics_request(int status, enum reason r)
{
    struct metrics_block *b = mine();
    struct req_slot *s = req_slot(b->req, REQ_SLOTS, req_key(status, r));
    if (s == NULL)
        add_u(b, &b->c[MT_REQ_OVERFLOW], 1);
    else
        add_u(b, &s->n, 1);
}

void metrics_dir_search(enum metrics_counter result, double seconds)
{
    if (result != MT_DIR_SEARCH_OK && result != MT_DIR_SEARCH_FAILED &&
        result != MT_DIR_SEARCH_TIMEOUT)
        return;
    struct metrics_block *b = mine();
    size_t i = 0;
    if (!(seconds >= 0)) /* NaN too */
        seconds = 0;
    while (i < DIR_BUCKETS && seconds > dir_bounds[i])
        i++;
    add_u(b, &b->c[result], 1);
    add_u(b, &b->dir_bucket[i], 1);
    add_u(b, &b->dir_sum_us, seconds > 1e6 ? (uint64_t)1e12 : (uint64_t)(seconds * 1e6 + 0.5));
}

void metrics_reload(bool ok)
{
    atomic_fetch_add_explicit(&global_block.c[ok ? MT_RELOAD_OK : MT_RELOAD_FAILED], 1,
                              memory_order_relaxed);
    if (ok)
        atomic_store_explicit(&last_reload_ok, (int64_t)time(NULL), memory_order_relaxed);
}

void metrics_crl_clear(void)
{
    pthread_mutex_lock(&crls.lock);
    crls.n = 0;
    pthread_mutex_unlock(&crls.lock);
}

void metrics_crl_set(const char *issuer, int64_t last_update, int64_t next_update)
{
    if (issuer == NULL)
        return;
    pthread_mutex_lock(&crls.lock);
    size_t i;
    for (i = 0; i < crls.n; i++)
        if (strncmp(crls.e[i].issuer, issuer, sizeof crls.e[i].issuer - 1) == 0)
            break;
    if (i == crls.n && crls.n < METRICS_CRL_MAX)
        crls.n++;
    if (i < crls.n) {
        snprintf(crls.e[i].issuer, sizeof crls.e[i].issuer, "%s", issuer);
        crls.e[i].last_update = last_update;
        crls.e[i].next_update = next_update;
    }
    pthread_mutex_unlock(&crls.lock);
}

void metrics_crl_replace(const char *const *issuer, const int64_t *last_update,
                         const int64_t *next_update, size_t n)
{
    pthread_mutex_lock(&crls.lock);
    crls.n = 0;
    for (size_t k = 0; k < n && crls.n < METRICS_CRL_MAX; k++) {
        if (issuer[k] == NULL)
            continue;
        size_t i;
        for (i = 0; i < crls.n; i++)
            if (strncmp(crls.e[i].issuer, issuer[k], sizeof crls.e[i].issuer - 1) == 0)
                break;
        if (i == crls.n)
            crls.n++;
        snprintf(crls.e[i].issuer, sizeof crls.e[i].issuer, "%s", issuer[k]);
        crls.e[i].last_update = last_update[k];
        crls.e[i].next_update = next_update[k];
    }
    pthread_mutex_unlock(&crls.lock);
}

/* ---- sums ------------------------------------------------------------------------ */

struct sums {
    uint64_t c[MT_MAX];
    int64_t g[MG_MAX];
    uint64_t dir_bucket[DIR_BUCKETS + 1];
    uint64_t dir_sum_us;
    struct {
        uint32_t key;
        uint64_t n;
    } req[REQ_SLOTS * 4];
    size_t n_req;
};

static void sum_block(struct sums *s, struct metrics_block *b)
{
    for (size_t i = 0; i < MT_MAX; i++)
        s->c[i] += atomic_load_explicit(&b->c[i], memory_order_relaxed);
    for (size_t i = 0; i < MG_MAX; i++)
        s->g[i] += atomic_load_explicit(&b->g[i], memory_order_relaxed);
    for (size_t i = 0; i <= DIR_BUCKETS; i++)
        s->dir_bucket[i] += atomic_load_explicit(&b->dir_bucket[i], memory_order_relaxed);
    s->dir_sum_us += atomic_load_explicit(&b->dir_sum_us, memory_order_relaxed);
    for (size_t i = 0; i < REQ_SLOTS; i++) {
        uint32_t key = atomic_load_explicit(&b->req[i].key, memory_order_acquire);
        if (key == 0)
            continue;
        uint64_t n = atomic_load_explicit(&b->req[i].n, memory_order_relaxed);
        size_t j;
        for (j = 0; j < s->n_req && s->req[j].key != key; j++)
            ;
        if (j == s->n_req) {
            if (s->n_req == sizeof s->req / sizeof s->req[0]) {
                s->c[MT_REQ_OVERFLOW] += n;
                continue;
            }
            s->req[s->n_req].key = key;
            s->req[s->n_req].n = 0;
            s->n_req++;
        }
        s->req[j].n += n;
    }
}

static void sums_take(struct sums *s)
{
    memset(s, 0, sizeof *s);
    sum_block(s, &global_block);
    pthread_mutex_lock(&blocks_lock);
    for (struct metrics_block *b = blocks; b != NULL; b = b->next)
        sum_block(s, b);
    pthread_mutex_unlock(&blocks_lock);
}

uint64_t metrics_counter_value(enum metrics_counter c)
{
    if ((unsigned)c >= MT_MAX)
        return 0;
    uint64_t v = atomic_load_explicit(&global_block.c[c], memory_order_relaxed);
    pthread_mutex_lock(&blocks_lock);
    for (struct metrics_block *b = blocks; b != NULL; b = b->next)
        v += atomic_load_explicit(&b->c[c], memory_order_relaxed);
    pthread_mutex_unlock(&blocks_lock);
    return v;
}

int64_t metrics_gauge_value(enum metrics_gauge g)
{
    if ((unsigned)g >= MG_MAX)
        return 0;
    int64_t v = atomic_load_explicit(&global_block.g[g], memory_order_relaxed);
    pthread_mutex_lock(&blocks_lock);
    for (struct metrics_block *b = blocks; b != NULL; b = b->next)
        v += atomic_load_explicit(&b->g[g], memory_order_relaxed);
    pthread_mutex_unlock(&blocks_lock);
    return v;
}

int64_t metrics_directory_up(void)
{
    int64_t n = 0;
    for (int i = MG_DIR_UP0; i <= MG_DIR_UP_LAST; i++)
        n += metrics_gauge_value((enum metrics_gauge)i);
    return n;
}

void metrics_shutdown(void)
{
    pthread_mutex_lock(&blocks_lock);
    struct metrics_block *b = blocks;
    blocks = NULL;
    pthread_mutex_unlock(&blocks_lock);
    while (b != NULL) {
        struct metrics_block *next = b->next;
        free(b);
        b = next;
    }
    self = NULL;
}

/* ---- exposition -------------------------------------------------------------------- */

struct text {
    char *buf;
    size_t len, cap;
    bool failed;
};

static void put(struct text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void put(struct text *t, const char *fmt, ...)
{
    for (int round = 0; round < 2 && !t->failed; round++) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(t->buf + t->len, t->cap - t->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            t->failed = true;
            return;
        }
        if ((size_t)n < t->cap - t->len) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = t->cap * 2;
        while (cap - t->len <= (size_t)n)
            cap *= 2;
        char *b = realloc(t->buf, cap);
        if (b == NULL) {
            t->failed = true;
            return;
        }
        t->buf = b;
        t->cap = cap;
    }
}

void metrics_label_escape(const char *s, char *out, size_t outlen)
{
    size_t o = 0;
    if (outlen == 0)
        return;
    for (; s != NULL && *s != '\0'; s++) {
        char esc[3] = {0};
        unsigned char ch = (unsigned char)*s;
        if (ch == '\\' || ch == '"')
            esc[0] = '\\', esc[1] = (char)ch;
        else if (ch == '\n')
            esc[0] = '\\', esc[1] = 'n';
        else if (ch < 0x20 || ch == 0x7f)
            esc[0] = '?';
        else
            esc[0] = (char)ch;
        size_t n = strlen(esc);
        if (o + n >= outlen)
            break;
        memcpy(out + o, esc, n);
        o += n;
    }
    out[o] = '\0';
}

static void family(struct text *t, const char *name, const char *type, const char *help)
{
    put(t, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* One family of plain series: name, type, help, then each (index, labels). */
struct series {
    int idx;
    const char *labels; /* "" or `a="b",c="d"` */
};
struct plain_family {
    const char *name, *type, *help;
    bool gauge;
    struct series s[8];
};

static const struct plain_family plain[] = {
    {"certmapd_connections_accepted_total",
     "counter",
     "Client connections accepted.",
     false,
     {{MT_CONN_ACCEPTED, ""}, {-1, NULL}}},
    {"certmapd_connections_reclaimed_total",
     "counter",
     "Client connections idle between requests closed to make room for new clients "
     "([server] reclaim_idle).",
     false,
     {{MT_CONN_RECLAIMED, ""}, {-1, NULL}}},
    {"certmapd_connections",
     "gauge",
     "Client connections open, by state.",
     true,
     {{MG_CONN_HANDSHAKE, "state=\"handshake\""},
      {MG_CONN_IDLE, "state=\"idle\""},
      {MG_CONN_ACTIVE, "state=\"active\""},
      {MG_CONN_CLOSING, "state=\"closing\""},
      {-1, NULL}}},
    {"certmapd_tls_handshakes_total",
     "counter",
     "TLS handshakes with clients, by kind (full, resumed, late certificate) and result "
     "(ok, failed: a TLS error, closed: the client went away first, timeout).",
     false,
     {{MT_HS_FULL_OK, "kind=\"full\",result=\"ok\""},
      {MT_HS_FULL_FAILED, "kind=\"full\",result=\"failed\""},
      {MT_HS_FULL_CLOSED, "kind=\"full\",result=\"closed\""},
      {MT_HS_FULL_TIMEOUT, "kind=\"full\",result=\"timeout\""},
      {MT_HS_RESUMED_OK, "kind=\"resumed\",result=\"ok\""},
      {MT_HS_LATE_OK, "kind=\"late\",result=\"ok\""},
      {MT_HS_LATE_FAILED, "kind=\"late\",result=\"failed\""},
      {-1, NULL}}},
    {"certmapd_identity_cache_lookups_total",
     "counter",
     "Identity cache lookups: hit, miss (a directory search follows), wait (behind the search "
     "of another request for the same certificate).",
     false,
     {{MT_CACHE_HIT, "result=\"hit\""},
      {MT_CACHE_MISS, "result=\"miss\""},
      {MT_CACHE_WAIT, "result=\"wait\""},
      {-1, NULL}}},
    {"certmapd_identity_cache_entries",
     "gauge",
     "Identities held in the cache.",
     true,
     {{MG_CACHE_ENTRIES, ""}, {-1, NULL}}},
    {"certmapd_directory_searches_total",
     "counter",
     "Directory account searches, by result.",
     false,
     {{MT_DIR_SEARCH_OK, "result=\"ok\""},
      {MT_DIR_SEARCH_FAILED, "result=\"failed\""},
      {MT_DIR_SEARCH_TIMEOUT, "result=\"timeout\""},
      {-1, NULL}}},
    {"certmapd_backend_connections",
     "gauge",
     "Backend connections open (connecting, in use or idle), and of those idle in a pool.",
     true,
     {{MG_BACKEND_OPEN, "state=\"open\""}, {MG_BACKEND_POOLED, "state=\"pooled\""}, {-1, NULL}}},
    {"certmapd_backend_connects_total",
     "counter",
     "Backend connection attempts, by result (each address tried counts once).",
     false,
     {{MT_BACKEND_CONNECT_OK, "result=\"ok\""},
      {MT_BACKEND_CONNECT_ERROR, "result=\"error\""},
      {MT_BACKEND_CONNECT_TIMEOUT, "result=\"timeout\""},
      {-1, NULL}}},
    {"certmapd_backend_pool_total",
     "counter",
     "Pooled backend connections: reused for a request, or found closed by the backend (stale).",
     false,
     {{MT_BACKEND_REUSED, "result=\"reused\""},
      {MT_BACKEND_STALE, "result=\"stale\""},
      {-1, NULL}}},
    {"certmapd_delegation_cache_lookups_total",
     "counter",
     "Delegated credential cache lookups, by result.",
     false,
     {{MT_DELEG_CACHE_HIT, "result=\"hit\""},
      {MT_DELEG_CACHE_MISS, "result=\"miss\""},
      {-1, NULL}}},
    {"certmapd_delegation_cache_entries",
     "gauge",
     "Users whose delegated credentials are held.",
     true,
     {{MG_DELEG_CACHE_ENTRIES, ""}, {-1, NULL}}},
    {"certmapd_kdc_exchanges_total",
     "counter",
     "Protocol transition (S4U2Self) exchanges with the KDC, by result.",
     false,
     {{MT_KDC_OK, "result=\"ok\""},
      {MT_KDC_REFUSED, "result=\"refused\""},
      {MT_KDC_UNAVAILABLE, "result=\"unavailable\""},
      {-1, NULL}}},
    {"certmapd_reloads_total",
     "counter",
     "Configuration reloads, by result.",
     false,
     {{MT_RELOAD_OK, "result=\"ok\""}, {MT_RELOAD_FAILED, "result=\"failed\""}, {-1, NULL}}},
};

static void render_plain(struct text *t, const struct plain_family *f, const struct sums *s)
{
    family(t, f->name, f->type, f->help);
    for (const struct series *x = f->s; x->labels != NULL; x++) {
        const char *open = x->labels[0] != '\0' ? "{" : "", *close = x->labels[0] ? "}" : "";
        if (f->gauge)
            put(t, "%s%s%s%s %" PRId64 "\n", f->name, open, x->labels, close, s->g[x->idx]);
        else
            put(t, "%s%s%s%s %" PRIu64 "\n", f->name, open, x->labels, close, s->c[x->idx]);
    }
}

static int req_cmp(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static void render_requests(struct text *t, struct sums *s)
{
    family(t, "certmapd_requests_total", "counter",
           "Requests answered (as in the access log), by HTTP status and reason code (\"\" for "
           "none).");
    /* key first in each element: sorted by status, then reason */
    qsort(s->req, s->n_req, sizeof s->req[0], req_cmp);
    for (size_t i = 0; i < s->n_req; i++) {
        uint32_t k = s->req[i].key - 1;
        unsigned status = k >> 8;
        enum reason r = (enum reason)(k & 0xff);
        char st[16];
        if (status == 0)
            snprintf(st, sizeof st, "other");
        else
            snprintf(st, sizeof st, "%u", status);
        put(t, "certmapd_requests_total{status=\"%s\",reason=\"%s\"} %" PRIu64 "\n", st,
            reason_name(r), s->req[i].n);
    }
    if (s->c[MT_REQ_OVERFLOW] > 0)
        put(t, "certmapd_requests_total{status=\"other\",reason=\"other\"} %" PRIu64 "\n",
            s->c[MT_REQ_OVERFLOW]);
}

static void render_dir(struct text *t, const struct sums *s, const struct metrics_labels *l)
{
    const char *h = "certmapd_directory_search_duration_seconds";
    family(t, h, "histogram", "Time from sending a directory account search to its end.");
    uint64_t cum = 0;
    for (size_t i = 0; i < DIR_BUCKETS; i++) {
        cum += s->dir_bucket[i];
        put(t, "%s_bucket{le=\"%g\"} %" PRIu64 "\n", h, dir_bounds[i], cum);
    }
    cum += s->dir_bucket[DIR_BUCKETS];
    put(t, "%s_bucket{le=\"+Inf\"} %" PRIu64 "\n", h, cum);
    put(t, "%s_sum %" PRIu64 ".%06" PRIu64 "\n", h, s->dir_sum_us / 1000000,
        s->dir_sum_us % 1000000);
    put(t, "%s_count %" PRIu64 "\n", h, cum);

    family(t, "certmapd_directory_connections", "gauge",
           "Worker connections bound to each [ldap] uri (0 for all: the directory is down).");
    size_t n = l != NULL ? l->n_ldap_uri : 0;
    for (size_t i = 0; i < CONF_MAX_URIS; i++) {
        int64_t v = s->g[MG_DIR_UP0 + i];
        if (i >= n && v == 0)
            continue;
        char uri[512];
        if (i < n)
            metrics_label_escape(l->ldap_uri[i], uri, sizeof uri);
        else
            snprintf(uri, sizeof uri, "#%zu", i + 1); /* a uri of a replaced configuration */
        put(t, "certmapd_directory_connections{uri=\"%s\"} %" PRId64 "\n", uri, v);
    }
}

static void render_crls(struct text *t, time_t now)
{
    family(t, "certmapd_crl_age_seconds", "gauge",
           "Seconds since the thisUpdate (lastUpdate) of the CRL loaded for each issuer.");
    pthread_mutex_lock(&crls.lock);
    char issuer[METRICS_CRL_MAX][512];
    int64_t last[METRICS_CRL_MAX], next[METRICS_CRL_MAX];
    size_t n = crls.n;
    for (size_t i = 0; i < n; i++) {
        metrics_label_escape(crls.e[i].issuer, issuer[i], sizeof issuer[i]);
        last[i] = crls.e[i].last_update;
        next[i] = crls.e[i].next_update;
    }
    pthread_mutex_unlock(&crls.lock);
    for (size_t i = 0; i < n; i++)
        put(t, "certmapd_crl_age_seconds{issuer=\"%s\"} %" PRId64 "\n", issuer[i],
            last[i] > 0 ? (int64_t)now - last[i] : 0);
    family(t, "certmapd_crl_next_update_timestamp_seconds", "gauge",
           "Unix time of the nextUpdate of the CRL loaded for each issuer (0: none given).");
    for (size_t i = 0; i < n; i++)
        put(t, "certmapd_crl_next_update_timestamp_seconds{issuer=\"%s\"} %" PRId64 "\n", issuer[i],
            next[i]);
}

char *metrics_render(const struct metrics_labels *labels, size_t *len)
{
    struct sums *s = malloc(sizeof *s);
    struct text t = {.buf = malloc(16384), .cap = 16384};
    if (s == NULL || t.buf == NULL) {
        free(s);
        free(t.buf);
        return NULL;
    }
    t.buf[0] = '\0';
    sums_take(s);
    time_t now = time(NULL);
    render_requests(&t, s);
    for (size_t i = 0; i < sizeof plain / sizeof plain[0]; i++) {
        render_plain(&t, &plain[i], s);
        if (strcmp(plain[i].name, "certmapd_directory_searches_total") == 0)
            render_dir(&t, s, labels);
    }
    render_crls(&t, now);
    family(&t, "certmapd_last_reload_success_timestamp_seconds", "gauge",
           "Unix time of the last successful configuration reload (0: none).");
    put(&t, "certmapd_last_reload_success_timestamp_seconds %" PRId64 "\n",
        atomic_load_explicit(&last_reload_ok, memory_order_relaxed));
    free(s);
    if (t.failed) {
        free(t.buf);
        return NULL;
    }
    *len = t.len;
    return t.buf;
}
