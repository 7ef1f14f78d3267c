/* shcache/: the identity cache shared between instances through Redis
 * (hiredis, asynchronous, on a worker's event loop). One per worker and
 * configuration generation, made and freed with that worker's mapper. It
 * only ever answers "miss" when it cannot answer well: not connected, slow,
 * or a value that does not verify; the mapper then asks the directory. */
#ifndef CM_SHCACHE_H
#define CM_SHCACHE_H

#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>

#include "conf/conf.h"
#include "mapping/mapping.h"

struct shc;

/* A client for <c>'s [mapping] shared_cache on <base>; it connects in the
 * background (and again, with backoff, whenever the connection is lost).
 * NULL with a reason in <err> when the key or password file cannot be read
 * or memory runs out; Redis being down is not an error. */
struct shc *shc_open(const struct conf *c, struct event_base *base, char *err, size_t errlen);

/* The map_shared interface for mapper_set_shared(); lives as long as <s>. */
const struct map_shared *shc_shared(struct shc *s);

/* Closes the connection; every get must have called back or been cancelled
 * (mapper_free cancels its own). NULL is fine. */
void shc_free(struct shc *s);

#endif
