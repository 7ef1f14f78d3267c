/* mapping/: certificate facts → directory lookups → an account, as Active
 * Directory maps certificates (MS-PKCA, KB5014754). Pure logic and the shared
 * identity cache: no I/O here. Directory access goes through struct
 * map_source (LDAP in ldap/, or an LDIF file in mapping/ldif.c). */
#ifndef CM_MAPPING_H
#define CM_MAPPING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <event2/event.h>

#include "common/reason.h"
#include "conf/conf.h"
#include "tls/facts.h"

enum map_strength { MAP_STRONG = 0, MAP_WEAK };

/* An AD account as mapping needs it: plain data, filled by a source. */
struct map_entry {
    char *dn;
    char *upn;                   /* userPrincipalName, NULL if absent */
    char *sam;                   /* sAMAccountName */
    char *sid;                   /* objectSid as "S-1-5-21-…" */
    uint32_t uac;                /* userAccountControl */
    uint32_t uac_computed;       /* msDS-User-Account-Control-Computed */
    bool has_uac_computed;
    int64_t account_expires;     /* FILETIME (100 ns since 1601); 0 or INT64_MAX = never */
    time_t when_created;         /* 0 if unknown */
    char **altsecids;            /* altSecurityIdentities values */
    size_t n_altsecids;
    bool is_computer;            /* objectClass includes computer */
    char *dns_host_name;
};

/* One directory lookup: entries whose <attr> equals one of <values>
 * (AD's matching: case-insensitive, spaces significant; objectSid binary). */
struct map_lookup {
    enum map_method method;
    const char *kind;            /* "sid", "altsecid", "upn", "dns" */
    const char *attr;            /* "objectSid", "altSecurityIdentities", "userPrincipalName", "dNSHostName" */
    char **values;               /* as stored in AD, e.g. "X509:<I>DC=test,…<SR>1200…";
                                  * for objectSid the "S-1-…" text (the binary form can hold
                                  * NULs), the filter carries the binary */
    enum map_strength *strength; /* per value */
    const char **labels;         /* per value: "altsecid:issuer-serial", "upn", … */
    size_t n_values;
    char *filter;                /* the LDAP filter, every value escaped by libldap */
};

/* The lookups for one certificate, in [mapping] methods order. */
struct map_plan {
    struct map_lookup *lookups;
    size_t n;
};

/* The outcome of mapping one certificate. */
struct map_result {
    enum reason reason;          /* R_NONE: mapped */
    char *upn, *dn, *sid, *sam;  /* the account, R_NONE only (sam "NETBIOS\\sam" where known) */
    char *method;                /* R_NONE only: the label that matched, "altsecid:issuer-serial" */
    char *detail;                /* one line for logs and `certmapd map` */
};

/* Builds the plan for <f> under <c>. Returns 0, or -1 (out of memory / a value
 * that cannot be escaped). */
int map_plan_build(const struct conf *c, const struct cert_facts *f, struct map_plan *out);
void map_plan_purge(struct map_plan *p);

/* Judges the answers: <answers>[i] holds the entries found for lookup i
 * (n_answers[i] of them). Fills <res> (caller purges). <netbios> may be NULL. */
void map_judge(const struct conf *c, const struct cert_facts *f, const struct map_plan *p,
               struct map_entry *const *answers, const size_t *n_answers, const char *netbios,
               time_t now, struct map_result *res);

void map_result_purge(struct map_result *r);
int map_result_copy(struct map_result *dst, const struct map_result *src);
void map_entry_purge(struct map_entry *e);

/* ---- sources ----------------------------------------------------------------- */

/* Called exactly once per search, never from inside source->search().
 * <ok> false: the directory is unavailable or timed out (fail closed).
 * <entries> belong to the source; valid only during the call. */
typedef void (*map_search_cb)(void *arg, bool ok, struct map_entry *entries, size_t n);

struct map_source {
    void *ctx;
    /* Starts looking up <l>; returns a handle, or NULL if it could not start (cb not called). */
    void *(*search)(void *ctx, const struct map_lookup *l, map_search_cb cb, void *arg);
    /* Cancels a search that has not called back; its cb is never called. */
    void (*cancel)(void *ctx, void *handle);
    /* "CORP", or NULL when unknown. */
    const char *(*netbios)(void *ctx);
    /* Frees the source (map_source_close); NULL when there is nothing to free. */
    void (*close)(void *ctx);
};

/* Closes <s> and frees it: every search must have called back or been
 * cancelled (mapper_free cancels its own). NULL is fine. */
void map_source_close(struct map_source *s);

/* ---- the identity cache (shared by all workers) -------------------------------- */

struct map_cache;

struct map_cache *map_cache_new(size_t entries, uint64_t ttl_ms, uint64_t negative_ttl_ms);
/* One more holder of <mc> (a reload that kept the mapping); map_cache_free
 * drops one, and the last frees it. Returns <mc>. */
struct map_cache *map_cache_hold(struct map_cache *mc);
void map_cache_free(struct map_cache *mc);

enum map_cache_state { MC_HIT, MC_MISS_OWNER, MC_WAIT };

/* A request parked behind another request's lookup of the same certificate. */
struct map_waiter {
    void (*wake)(struct map_waiter *w); /* called from the resolving thread: must only hand over */
    struct map_result result;           /* filled before wake */
    struct map_waiter *next;            /* cache-internal */
};

/* Looks up <key> (the certificate's SHA-256, hex). MC_HIT: copy in <out>.
 * MC_MISS_OWNER: the caller resolves and must call map_cache_put, always (even
 * when its client went away: waiters are parked behind it).
 * MC_WAIT: another request resolves it; <w> is woken with the result. */
enum map_cache_state map_cache_get(struct map_cache *mc, const char *key, struct map_result *out,
                                   struct map_waiter *w);
/* Stores the owner's result (not cached when R_DIRECTORY_UNAVAILABLE) and wakes waiters. */
void map_cache_put(struct map_cache *mc, const char *key, const struct map_result *r);
/* Removes a waiter that gave up (its client went away); false if it was already woken. */
bool map_cache_unwait(struct map_cache *mc, const char *key, struct map_waiter *w);

/* ---- the shared cache (another tier behind the local one: Redis, shcache/) ------- */

/* Called exactly once per get, never from inside get(). <r> NULL: a miss (not
 * there, unreadable, or no answer in time). <r> is valid only during the
 * call; <ttl_ms> is what is left of its life. */
typedef void (*map_shared_cb)(void *arg, const struct map_result *r, uint64_t ttl_ms);

struct map_shared {
    void *ctx;
    /* Looks up the certificate <sha256> (hex); a handle, or NULL when it
     * cannot ask now (not connected: fail fast; cb not called). */
    void *(*get)(void *ctx, const char *sha256, map_shared_cb cb, void *arg);
    /* Cancels a get that has not called back; its cb is never called. */
    void (*cancel)(void *ctx, void *handle);
    /* Stores <r> for <ttl_ms>, fire and forget (dropped when not connected). */
    void (*put)(void *ctx, const char *sha256, const struct map_result *r, uint64_t ttl_ms);
};

/* The mapping configuration's fingerprint, 64 hex digits and a NUL in <out>:
 * SHA-256 over [mapping] (less its shared_cache* keys) and [ldap] as written
 * and, with source = ldif, the LDIF file's content, so that whatever may
 * change an answer changes the keys. 0, or -1 with a reason in <err>. */
int map_shared_fingerprint(const struct conf *c, char out[65], char *err, size_t errlen);

/* The longest value map_shared_decode accepts: a reader need fetch no more. */
#define MAP_SHARED_VALUE_MAX 65536

/* The value stored for <r> under the key <rkey>: "cm1 EXPIRES REASON F F F F F F MAC",
 * EXPIRES in ms since the epoch, each F "-" (none) or LEN:BYTES (upn, dn,
 * sid, sam, method, detail), MAC the HMAC-SHA256 under <mac_key> of <rkey>,
 * a newline and all before " MAC". Heap string (length in <*len>), or NULL
 * (no memory, or a result that is not to be shared: directory unavailable). */
char *map_shared_encode(const struct map_result *r, uint64_t expires_ms, const char *rkey,
                        const unsigned char *mac_key, size_t mac_key_len, size_t *len);

/* Reads a value from the shared cache: hostile input. 0 with <out> filled
 * (caller purges) and <*ttl_ms> its life left at <now_ms>, or -1 with <why>
 * (malformed, signed with another key, for another key, expired). */
int map_shared_decode(const char *val, size_t len, const char *rkey, const unsigned char *mac_key,
                      size_t mac_key_len, uint64_t now_ms, struct map_result *out,
                      uint64_t *ttl_ms, const char **why);

/* ---- resolving one certificate ------------------------------------------------ */

/* Per-worker mapper: the source, the shared cache, the configuration. */
struct mapper;
/* <mc> may be NULL (no cache). Returns NULL when out of memory. */
struct mapper *mapper_new(const struct conf *c, struct map_source *src, struct map_cache *mc);
void mapper_free(struct mapper *m);

/* How a job parked behind another worker's lookup gets back to its own loop:
 * <post> must run fn(fn_arg) soon on the mapper's thread (the proxy uses
 * event_active). It is called from the resolving thread, and may not touch
 * fn_arg itself. Unset: fn runs directly on the resolving thread (one thread only). */
typedef void (*map_post_fn)(void *post_arg, void (*fn)(void *), void *fn_arg);
void mapper_set_post(struct mapper *m, map_post_fn post, void *post_arg);

/* Asks <sh> (may be NULL) on a local cache miss before the directory, and
 * stores the directory's answers there. <sh> outlives the mapper. */
void mapper_set_shared(struct mapper *m, const struct map_shared *sh);

/* One step of the decision, for `certmapd map`: lookup i, its filter, what came back. */
typedef void (*map_trace_cb)(void *arg, const struct map_lookup *l, bool ok,
                             const struct map_entry *entries, size_t n);

typedef void (*map_done_cb)(void *arg, const struct map_result *res);
struct map_job;

/* Maps <f>. Answered at once (cache hit, or nothing to look up): fills <now>
 * and returns NULL. Otherwise returns a job whose <cb> is called once, later.
 * <trace> may be NULL. What the job needs of <f> is copied: <f> may go after the call. */
struct map_job *map_job_start(struct mapper *m, const struct cert_facts *f, map_done_cb cb,
                              void *arg, map_trace_cb trace, struct map_result *now);
/* Abandons a job whose cb has not been called; cb is never called after. A
 * lookup already running goes on and its result is still cached (and given to
 * requests waiting for it); only <cb> is suppressed. */
void map_job_cancel(struct map_job *j);

/* ---- LDIF source (mapping/ldif.c) --------------------------------------------- */

/* Loads AD-shaped entries from an LDIF file with libldap's LDIF reader.
 * Searches answer from <base>'s loop (an activated event drains the pending
 * searches), never from inside search(): one source per worker thread.
 * <netbios> (may be NULL) is what netbios() answers; it is copied.
 * NULL + "FILE:LINE: reason" in <err> on failure; map_source_close() frees it. */
struct map_source *map_ldif_open(const char *path, const char *netbios, struct event_base *base,
                                 char *err, size_t errlen);

#endif
