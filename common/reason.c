#include "common/reason.h"

static const struct {
    const char *name;
    int status;
} reasons[R_MAX] = {
    [R_NONE] = {"", 200},
    [R_CERT_REQUIRED] = {"cert_required", 403},
    [R_CERT_UNTRUSTED] = {"cert_untrusted", 403},
    [R_ISSUER_NOT_ALLOWED] = {"issuer_not_allowed", 403},
    [R_CERT_EXPIRED] = {"cert_expired", 403},
    [R_CERT_REVOKED] = {"cert_revoked", 403},
    [R_CERT_BAD_USAGE] = {"cert_bad_usage", 403},
    [R_CERT_MALFORMED] = {"cert_malformed", 403},
    [R_NO_MAPPING] = {"no_mapping", 403},
    [R_AMBIGUOUS_MAPPING] = {"ambiguous_mapping", 403},
    [R_WEAK_MAPPING] = {"weak_mapping", 403},
    [R_SID_MISMATCH] = {"sid_mismatch", 403},
    [R_ACCOUNT_DISABLED] = {"account_disabled", 403},
    [R_DIRECTORY_UNAVAILABLE] = {"directory_unavailable", 503},
    [R_READ_AHEAD_EXCEEDED] = {"read_ahead_exceeded", 413},
    [R_BAD_REQUEST] = {"bad_request", 400},
    [R_HEAD_TOO_LARGE] = {"head_too_large", 431},
    [R_BACKEND_UNAVAILABLE] = {"backend_unavailable", 502},
    [R_BACKEND_TIMEOUT] = {"backend_timeout", 504},
    [R_KDC_UNAVAILABLE] = {"kdc_unavailable", 503},
    [R_DELEGATION_REFUSED] = {"delegation_refused", 403},
    [R_BACKEND_AUTH_FAILED] = {"backend_auth_failed", 502},
};

const char *reason_name(enum reason r)
{
    return (unsigned)r < R_MAX ? reasons[r].name : "internal";
}

int reason_status(enum reason r)
{
    return (unsigned)r < R_MAX ? reasons[r].status : 500;
}
