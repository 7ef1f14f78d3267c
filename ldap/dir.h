/* ldap/: the asynchronous Active Directory client (prefix dir_, since ldap_
 * belongs to libldap). Searches run on the worker's event_base and never
 * block it; connecting, TLS and binding happen off the loop. Exposes itself
 * to mapping/ as a struct map_source. */
#ifndef CM_LDAP_DIR_H
#define CM_LDAP_DIR_H

#include <event2/event.h>

#include "conf/conf.h"
#include "mapping/mapping.h"

struct dir;

/* A directory client for one worker. Starts connecting in the background.
 * Returns NULL + reason in <err> on a configuration problem (unreadable
 * password file...). */
struct dir *dir_new(struct event_base *base, const struct conf *c, char *err, size_t errlen);
void dir_free(struct dir *d);

/* The map_source view of <d> (owned by <d>: map_source_close() on it is dir_free(<d>)). */
struct map_source *dir_source(struct dir *d);

/* The mapping source that [mapping] source names, for one thread's <base>:
 * the directory client (dir_new) for "ldap", the LDIF file (map_ldif_open)
 * for "ldif". Here because ldap/ is the lowest module that may call both.
 * The caller frees it with map_source_close(). NULL + reason in <err>. */
struct map_source *dir_source_open(const struct conf *c, struct event_base *base, char *err,
                                   size_t errlen);

/* Connects and binds once, synchronously, for start-up checks and
 * `certmapd map`: 0; -1 when a directory refused us (wrong password, missing
 * base_dn, unreadable password file): a configuration error; -2 when no
 * directory could be reached (down, TLS failure). A clear reason in <err>.
 * Never called on a worker's loop once serving. */
int dir_check(const struct conf *c, char *err, size_t errlen);

#endif
