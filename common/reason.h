/* Reason codes: why a request was refused. The names are a contract (DESIGN.md,
 * "Answers to the client"): they appear in the access log and, with
 * detailed_errors = on, in the response body. Types only, shared by all modules. */
#ifndef CM_REASON_H
#define CM_REASON_H

enum reason {
    R_NONE = 0, /* accepted: no refusal reason (not R_OK: unistd.h owns that name) */
    R_CERT_REQUIRED,
    R_CERT_UNTRUSTED,
    R_ISSUER_NOT_ALLOWED,
    R_CERT_EXPIRED,
    R_CERT_REVOKED,
    R_CERT_BAD_USAGE,
    R_CERT_MALFORMED, /* NUL byte or invalid UTF-8 in a name: refused, never truncated */
    R_NO_MAPPING,
    R_AMBIGUOUS_MAPPING,
    R_WEAK_MAPPING,
    R_SID_MISMATCH,
    R_ACCOUNT_DISABLED,
    R_DIRECTORY_UNAVAILABLE,
    R_READ_AHEAD_EXCEEDED,
    R_BAD_REQUEST,
    R_HEAD_TOO_LARGE,
    R_BACKEND_UNAVAILABLE,
    R_BACKEND_TIMEOUT,
    R_KDC_UNAVAILABLE,    /* delegation: the KDC did not answer in time */
    R_DELEGATION_REFUSED, /* delegation: the KDC refused to delegate for this user */
    R_BACKEND_AUTH_FAILED, /* delegation: the backend refused the delegated token */
    R_MAX
};

/* The reason's contract name ("cert_required", ...); "" for R_NONE. Never NULL. */
const char *reason_name(enum reason r);

/* The HTTP status a refusal with <r> is answered with (403, 503, ...); 200 for R_NONE. */
int reason_status(enum reason r);

#endif
