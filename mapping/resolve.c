/* Resolving one certificate: the cache first; on a miss, the shared cache
 * (Redis) when there is one, then the plan's lookups through the source one
 * after another (stopping once the verdict is settled), then the judge. Only
 * the first request for a certificate asks the shared cache and the
 * directory; the others wait for its result (single flight, see cache.c). */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "mapping/internal.h"

struct mapper {
    const struct conf *c;
    struct map_source *src;
    struct map_cache *mc;
    map_post_fn post;
    void *post_arg;
    const struct map_shared *shared; /* NULL: none */
    struct map_job *owners;          /* jobs with a lookup in flight, for mapper_free */
};

struct map_job {
    struct mapper *m;
    /* What the judge and the cache need of the certificate, copied: an
     * abandoned owner outlives its client's facts. */
    struct cert_facts f;
    map_done_cb cb;
    map_trace_cb trace;
    void *arg;
    bool owner;     /* resolves (else waits behind another job's lookup) */
    bool cancelled; /* cb suppressed; the owner still finishes and caches */
    struct map_plan plan;
    struct map_entry **answers; /* per lookup, copies */
    size_t *n_answers;
    size_t next; /* the lookup running, or to run */
    void *handle;
    void *shared_handle; /* a shared cache get in flight */
    struct map_waiter w;
    struct map_job *prev_owner, *next_owner; /* in m->owners while <owner> */
};

struct mapper *mapper_new(const struct conf *c, struct map_source *src, struct map_cache *mc)
{
    struct mapper *m = calloc(1, sizeof(*m));
    if (m != NULL) {
        m->c = c;
        m->src = src;
        m->mc = mc;
    }
    return m;
}

void map_source_close(struct map_source *s)
{
    if (s != NULL && s->close != NULL)
        s->close(s->ctx);
}

static void job_free(struct map_job *j);

void mapper_free(struct mapper *m)
{
    if (m == NULL)
        return;
    /* Lookups still in flight (their clients gone, the process stopping):
     * cancelled at the source, which then never calls back, and freed. */
    while (m->owners != NULL) {
        struct map_job *j = m->owners;
        if (j->handle != NULL)
            m->src->cancel(m->src->ctx, j->handle);
        if (j->shared_handle != NULL)
            m->shared->cancel(m->shared->ctx, j->shared_handle);
        job_free(j);
    }
    free(m);
}

void mapper_set_post(struct mapper *m, map_post_fn post, void *post_arg)
{
    m->post = post;
    m->post_arg = post_arg;
}

void mapper_set_shared(struct mapper *m, const struct map_shared *sh)
{
    m->shared = sh;
}

static void job_free(struct map_job *j)
{
    if (j == NULL)
        return;
    if (j->owner) {
        if (j->prev_owner != NULL)
            j->prev_owner->next_owner = j->next_owner;
        else if (j->m->owners == j)
            j->m->owners = j->next_owner;
        if (j->next_owner != NULL)
            j->next_owner->prev_owner = j->prev_owner;
    }
    for (size_t i = 0; j->answers != NULL && i < j->plan.n; i++) {
        for (size_t k = 0; k < j->n_answers[i]; k++)
            map_entry_purge(&j->answers[i][k]);
        free(j->answers[i]);
    }
    free(j->answers);
    free(j->n_answers);
    map_plan_purge(&j->plan);
    map_result_purge(&j->w.result);
    free(j->f.sid);
    free(j->f.san_sid);
    free(j);
}

/* A result that says only why (no account). */
static void result_reason(struct map_result *r, enum reason why, const char *detail)
{
    memset(r, 0, sizeof(*r));
    r->reason = why;
    r->detail = strdup(detail);
}

/* The directory's answer goes to the shared cache too, with the local TTLs. */
static void shared_put(struct mapper *m, const char *sha256, const struct map_result *res)
{
    uint64_t ttl = res->reason == R_NONE ? m->c->cache_ttl_ms : m->c->negative_cache_ttl_ms;
    if (m->shared != NULL && res->reason != R_DIRECTORY_UNAVAILABLE && ttl > 0)
        m->shared->put(m->shared->ctx, sha256, res, ttl);
}

/* The owner's end: cache (and so wake the waiters), then tell the client. */
static void owner_finish(struct map_job *j, struct map_result *res)
{
    if (j->m->mc != NULL)
        map_cache_put(j->m->mc, j->f.sha256, res);
    shared_put(j->m, j->f.sha256, res);
    if (!j->cancelled)
        j->cb(j->arg, res);
    map_result_purge(res);
    job_free(j);
}

static void judge_now(struct map_job *j, struct map_result *res)
{
    const char *netbios =
        j->m->src && j->m->src->netbios ? j->m->src->netbios(j->m->src->ctx) : NULL;
    map_judge(j->m->c, &j->f, &j->plan, j->answers, j->n_answers, netbios, time(NULL), res);
}

static void on_answer(void *arg, bool ok, struct map_entry *entries, size_t n);

/* Starts lookup j->next; false when the source could not start it. */
static bool start_lookup(struct map_job *j)
{
    log_debug("mapping: %.16s: directory search %s", j->f.sha256, j->plan.lookups[j->next].kind);
    j->handle = j->m->src->search(j->m->src->ctx, &j->plan.lookups[j->next], on_answer, j);
    return j->handle != NULL;
}

static void on_answer(void *arg, bool ok, struct map_entry *entries, size_t n)
{
    struct map_job *j = arg;
    struct map_result res;
    size_t i = j->next;

    j->handle = NULL;
    if (j->trace != NULL && !j->cancelled)
        j->trace(j->arg, &j->plan.lookups[i], ok, entries, n);
    if (!ok) {
        result_reason(&res, R_DIRECTORY_UNAVAILABLE, "the directory did not answer");
        owner_finish(j, &res);
        return;
    }
    if (n > 0) {
        j->answers[i] = calloc(n, sizeof(*j->answers[i]));
        for (size_t k = 0; j->answers[i] != NULL && k < n; k++) {
            if (map_entry_copy(&j->answers[i][k], &entries[k]) != 0)
                break;
            j->n_answers[i]++;
        }
        if (j->n_answers[i] != n) {
            /* A partial answer could hide a second account: fail closed. */
            result_reason(&res, R_DIRECTORY_UNAVAILABLE, "out of memory reading the answer");
            owner_finish(j, &res);
            return;
        }
    }
    j->next++;
    if (j->next < j->plan.n && !map_judge_settles(j->m->c, &j->f, &j->plan, i, j->answers[i],
                                                  j->n_answers[i], time(NULL))) {
        if (start_lookup(j))
            return;
        result_reason(&res, R_DIRECTORY_UNAVAILABLE, "the directory search could not start");
        owner_finish(j, &res);
        return;
    }
    judge_now(j, &res);
    owner_finish(j, &res);
}

/* The shared cache's answer. A hit is the result (cached here for what is
 * left of its life, not written back); a miss asks the directory. */
static void on_shared(void *arg, const struct map_result *r, uint64_t ttl_ms)
{
    struct map_job *j = arg;
    struct map_result res;

    j->shared_handle = NULL;
    if (r != NULL) {
        log_debug("mapping: %.16s: from the shared cache (%s)", j->f.sha256,
                  r->reason == R_NONE ? "mapped" : reason_name(r->reason));
        if (j->m->mc != NULL)
            map_cache_put_ttl(j->m->mc, j->f.sha256, r, ttl_ms);
        if (!j->cancelled)
            j->cb(j->arg, r);
        job_free(j);
        return;
    }
    if (start_lookup(j))
        return;
    result_reason(&res, R_DIRECTORY_UNAVAILABLE, "the directory search could not start");
    owner_finish(j, &res);
}

/* On the job's own thread: hand the owner's result to the client. */
static void waiter_done(void *arg)
{
    struct map_job *j = arg;
    if (!j->cancelled)
        j->cb(j->arg, &j->w.result);
    job_free(j);
}

/* From the owner's thread: only hand over. */
static void waiter_wake(struct map_waiter *w)
{
    struct map_job *j = (struct map_job *)((char *)w - offsetof(struct map_job, w));
    if (j->m->post != NULL)
        j->m->post(j->m->post_arg, waiter_done, j);
    else
        waiter_done(j);
}

struct map_job *map_job_start(struct mapper *m, const struct cert_facts *f, map_done_cb cb,
                              void *arg, map_trace_cb trace, struct map_result *now)
{
    struct map_job *j = calloc(1, sizeof(*j));
    enum map_cache_state st = MC_MISS_OWNER;

    memset(now, 0, sizeof(*now));
    if (j == NULL)
        goto oom;
    j->m = m;
    memcpy(j->f.sha256, f->sha256, sizeof(j->f.sha256));
    j->f.not_before = f->not_before;
    j->f.not_after = f->not_after;
    if (f->sid != NULL && (j->f.sid = strdup(f->sid)) == NULL)
        goto oom;
    if (f->san_sid != NULL && (j->f.san_sid = strdup(f->san_sid)) == NULL)
        goto oom;
    j->cb = cb;
    j->arg = arg;
    j->trace = trace;
    j->w.wake = waiter_wake;
    /* The cache first: on a hit (every request after the first, on a busy
     * gateway) no plan is built, no filter escaped. */
    if (m->mc != NULL)
        st = map_cache_get(m->mc, f->sha256, now, &j->w);
    if (st == MC_HIT) {
        job_free(j);
        return NULL;
    }
    if (st == MC_WAIT)
        return j;
    /* This job owns the lookup: whatever happens, it puts a result, which
     * wakes the requests parked behind it. */
    if (map_plan_build(m->c, f, &j->plan) != 0) {
        result_reason(now, R_DIRECTORY_UNAVAILABLE, "out of memory");
    } else if (j->plan.n == 0) {
        judge_now(j, now); /* nothing to ask the directory */
    } else {
        j->answers = calloc(j->plan.n, sizeof(*j->answers));
        j->n_answers = calloc(j->plan.n, sizeof(*j->n_answers));
        if (j->answers == NULL || j->n_answers == NULL) {
            result_reason(now, R_DIRECTORY_UNAVAILABLE, "out of memory");
        } else {
            j->owner = true;
            j->next_owner = m->owners;
            if (m->owners != NULL)
                m->owners->prev_owner = j;
            m->owners = j;
            /* NULL: the shared cache cannot answer now (not connected). */
            if (m->shared != NULL)
                j->shared_handle = m->shared->get(m->shared->ctx, f->sha256, on_shared, j);
            if (j->shared_handle != NULL)
                return j;
            if (start_lookup(j))
                return j;
            result_reason(now, R_DIRECTORY_UNAVAILABLE, "the directory search could not start");
        }
    }
    if (m->mc != NULL)
        map_cache_put(m->mc, f->sha256, now); /* not cached when unavailable; wakes waiters */
    job_free(j);
    return NULL;
oom:
    job_free(j);
    result_reason(now, R_DIRECTORY_UNAVAILABLE, "out of memory");
    return NULL;
}

void map_job_cancel(struct map_job *j)
{
    if (j == NULL)
        return;
    if (j->owner) {
        /* The lookup goes on: its result is cached and the waiters get it. */
        j->cancelled = true;
        return;
    }
    if (map_cache_unwait(j->m->mc, j->f.sha256, &j->w)) {
        job_free(j);
        return;
    }
    /* Already woken: waiter_done is on its way and frees the job. */
    j->cancelled = true;
}
