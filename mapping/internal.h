/* mapping/ private: helpers shared by plan.c, judge.c, ldif.c, cache.c and
 * resolve.c. Unit tests may include it; nothing outside mapping/ does. */
#ifndef CM_MAPPING_INTERNAL_H
#define CM_MAPPING_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mapping/mapping.h"

/* KB5014754 "Certificate Backdating Registry Key" (CertificateBackdatingCompensation):
 * without it the KDC allows 10 minutes, the time AD CS backdates notBefore by. */
#define MAP_BACKDATING_ALLOWANCE_S 600

/* The certificate's SID: the SID extension's, else a SAN URL's (tls/facts
 * makes sure the two agree when both are there); NULL when it has none. */
static inline const char *map_cert_sid(const struct cert_facts *f)
{
    return f->sid != NULL ? f->sid : f->san_sid;
}

/* Deep copy of <src> into <dst>; 0, or -1 (no memory: <dst> is left empty). */
int map_entry_copy(struct map_entry *dst, const struct map_entry *src);

/* True when <e> has a value that equals one of <l>'s values by AD's rules
 * (case-insensitive, spaces significant; dNSHostName only on computers).
 * <*strongest> gets the index of the strongest matching value. */
bool map_entry_matches(const struct map_lookup *l, const struct map_entry *e, size_t *strongest);

/* Whether the answer to lookup <i> settles the verdict, so that the lookups
 * after it need not run: a strong match, an accepted weak one, or an
 * ambiguous one. False when it found nothing or only a refused weak match. */
bool map_judge_settles(const struct conf *c, const struct cert_facts *f, const struct map_plan *p,
                       size_t i, const struct map_entry *entries, size_t n, time_t now);

/* A cache with <shards> shards (1..16) and a clock in milliseconds (<clock>
 * NULL: CLOCK_MONOTONIC), for tests that need to see eviction and expiry. */
struct map_cache *map_cache_new_custom(size_t entries, uint64_t ttl_ms, uint64_t negative_ttl_ms,
                                       size_t shards, uint64_t (*clock)(void *), void *clock_arg);

/* As map_cache_put, for at most <ttl_ms> (less than the cache's own TTL:
 * what a shared cache's entry has left). */
void map_cache_put_ttl(struct map_cache *mc, const char *key, const struct map_result *r,
                       uint64_t ttl_ms);

/* Ready entries held (pending ones are not counted). */
size_t map_cache_count(struct map_cache *mc);

#endif
