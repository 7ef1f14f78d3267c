/* pp_parse: the PROXY protocol header of a proxy_protocol listener. Whatever
 * the bytes, a verdict comes without reading past them; a whole header is
 * within the bounds (107 bytes for v1, PP_MAX for v2) and no longer than the
 * input; every shorter prefix of it asks for more (a reader may consume all
 * of an incomplete header); the verdict does not change with bytes after it;
 * an address is IPv4 or IPv6. */
#include <string.h>
#include <sys/socket.h>

#include "proxy/proxyproto.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct pp_result r, p;
    enum pp_status st = pp_parse(data, size, &r);
    switch (st) {
    case PP_BAD:
        fuzz_assert(r.why != NULL && r.why[0] != '\0', "refused without a reason");
        return 0;
    case PP_NEED_MORE:
        fuzz_assert(size < PP_MAX, "asks for more after %zu bytes", size);
        return 0;
    case PP_DONE:
        break;
    }
    fuzz_assert(r.len > 0 && r.len <= size, "length %zu of %zu bytes", r.len, size);
    fuzz_assert(r.version == 1 || r.version == 2, "version %d", r.version);
    fuzz_assert(r.version != 1 || r.len <= PP_V1_MAX, "v1 line of %zu bytes", r.len);
    fuzz_assert(r.len <= PP_MAX, "header of %zu bytes", r.len);
    fuzz_assert(!r.has_addr || ((r.src.ss_family == AF_INET || r.src.ss_family == AF_INET6) &&
                                r.dst.ss_family == r.src.ss_family),
                "address family %d", r.src.ss_family);
    /* The header alone gives the same verdict; any prefix of it asks for more. */
    enum pp_status alone = pp_parse(data, r.len, &p);
    fuzz_assert(alone == PP_DONE && p.len == r.len && p.has_addr == r.has_addr &&
                    memcmp(&p.src, &r.src, sizeof p.src) == 0,
                "the header alone reads differently");
    size_t step = r.len > 256 ? r.len / 64 : 1;
    for (size_t k = 0; k < r.len; k += step)
        fuzz_assert(pp_parse(data, k, &p) == PP_NEED_MORE, "prefix of %zu/%zu bytes: %d", k, r.len,
                    pp_parse(data, k, &p));
    return 0;
}
