/* The LDIF source: the input as an LDIF file through map_ldif_open (libldap's
 * LDIF reader, then every entry's values checked as the LDAP source checks
 * them), then one search of each kind answered from the loop. */
#include <string.h>

#include <event2/event.h>

#include "common/log.h"
#include "mapping/mapping.h"
#include "tests/fuzz/fuzz.h"

static int n_cb;

static void search_cb(void *arg, bool ok, struct map_entry *entries, size_t n)
{
    n_cb++;
    for (size_t i = 0; i < n; i++)
        fuzz_assert(entries[i].dn != NULL, "an entry without a DN");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct event_base *base;
    if (base == NULL) {
        cm_log_set_level(CM_LOG_ERROR);
        base = event_base_new();
        if (base == NULL)
            abort();
    }
    const char *path = fuzz_temp_file("ldif", data, size);
    if (path == NULL)
        return 0;
    char err[1024];
    struct map_source *s = map_ldif_open(path, "CORP", base, err, sizeof err);
    if (s == NULL)
        return 0;
    static char *upn[] = {"alice@corp.example.test"};
    static char *sid[] = {"S-1-5-21-1111111111-2222222222-3333333333-1104"};
    static char *alt[] = {"X509:<I>DC=test,DC=example,DC=corp,CN=Corp Issuing CA<SR>01"};
    static char *dns[] = {"host.corp.example.test"};
    const struct map_lookup ls[] = {
        {.kind = "upn", .attr = "userPrincipalName", .values = upn, .n_values = 1},
        {.kind = "sid", .attr = "objectSid", .values = sid, .n_values = 1},
        {.kind = "altsecid", .attr = "altSecurityIdentities", .values = alt, .n_values = 1},
        {.kind = "dns", .attr = "dNSHostName", .values = dns, .n_values = 1},
    };
    int started = 0;
    n_cb = 0;
    for (size_t i = 0; i < sizeof ls / sizeof ls[0]; i++)
        if (s->search(s->ctx, &ls[i], search_cb, NULL) != NULL)
            started++;
    for (int i = 0; i < 8 && n_cb < started; i++)
        event_base_loop(base, EVLOOP_NONBLOCK);
    fuzz_assert(n_cb == started, "%d of %d searches answered", n_cb, started);
    map_source_close(s);
    return 0;
}
