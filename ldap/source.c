/* The mapping source the configuration chooses, opened in one place for the
 * workers, `certmapd -t` and `certmapd map`. */
#include "ldap/dir.h"

struct map_source *dir_source_open(const struct conf *c, struct event_base *base, char *err,
                                   size_t errlen)
{
    if (c->map_source == MAP_SOURCE_LDIF)
        return map_ldif_open(c->ldif_file, c->netbios_domain, base, err, errlen);
    struct dir *d = dir_new(base, c, err, errlen);
    return d != NULL ? dir_source(d) : NULL;
}
