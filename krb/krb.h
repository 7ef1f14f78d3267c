/* krb/: Kerberos constrained delegation to the backend, on MIT krb5's GSSAPI.
 * The gateway's service account (its keys in a keytab) obtains, for the
 * account a certificate was mapped to, a ticket to the backend's SPN:
 * protocol transition (S4U2Self), then constrained delegation (S4U2Proxy),
 * and writes the Negotiate token for `Authorization: Negotiate`. Every call
 * that may reach the KDC runs on a small pool of threads of its own, and the
 * tokens of users whose credential is cached on one more, which a slow KDC
 * does not hold up; results come back to the asking worker's loop through
 * its post function. Per user,
 * the delegated credential is cached until its end time less a margin
 * (bounded, least recently used first, one KDC exchange for many requests of
 * one new user). Knows nothing of HTTP. */
#ifndef CM_KRB_H
#define CM_KRB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "common/reason.h"
#include "conf/conf.h"

struct krb;

/* Whether [delegation] keytab can be read and holds a key for principal, as
 * `certmapd -t` and start-up check it; no KDC is contacted. 0, or -1 with
 * "FILE:LINE: [delegation] keytab: reason" in <err>. */
int krb_check_keytab(const struct conf *c, char *err, size_t errlen);

/* The delegation context for <c> ([delegation] mode = kerberos): the service
 * credentials (from the keytab; the TGT is obtained and renewed by GSSAPI as
 * it is needed) and the thread pool. NULL with a reason in <err>. */
struct krb *krb_new(const struct conf *c, char *err, size_t errlen);
/* Stops the pool threads, once what they are doing is done (queued jobs are
 * dropped); their results were posted to workers that must still exist. */
void krb_stop(struct krb *k);
/* Stops and frees <k>; NULL is fine. */
void krb_free(struct krb *k);

/* Start-up check, synchronously: the service account's initial ticket from
 * its keytab. 0; -1 when the KDC refuses it (keys out of date, account
 * disabled): a configuration error; -2 when no KDC answered. A clear reason in
 * <err> either way. A missing delegation right shows with the first user
 * (403 delegation_refused): a KDC does no S4U2Self for the account itself. */
int krb_probe(struct krb *k, char *err, size_t errlen);

/* A token for one backend connection (or request). */
struct krb_token {
    enum reason reason;   /* R_NONE, R_KDC_UNAVAILABLE or R_DELEGATION_REFUSED */
    char *header;         /* on R_NONE: "Negotiate <base64>" */
    char *detail;         /* what the KDC or GSSAPI said, for the error log */
    char *client;         /* the delegated client principal, "alice@CORP.EXAMPLE.TEST" */
    bool cached;          /* the user's credential came from the cache: no KDC exchange */
    void *gss_ctx;        /* the security context, for the backend's mutual answer */
    void *target;         /* the backend's name (owned by struct krb) */
};

/* Checks the backend's answer <b64> (from WWW-Authenticate: Negotiate <b64>)
 * against <t>'s context: mutual authentication. Local; no KDC. 0 verified, -1 not. */
int krb_token_verify(struct krb_token *t, const char *b64, size_t len);
void krb_token_free(struct krb_token *t);

/* How a result gets back to the asking worker's loop (as mapping's post). */
typedef void (*krb_post_fn)(void *post_arg, void (*fn)(void *), void *fn_arg);
/* Receives the token (and owns it). */
typedef void (*krb_done_cb)(void *arg, struct krb_token *t);

struct krb_job;

/* Starts getting a token for <user> ("alice@CORP.EXAMPLE.TEST" with
 * <enterprise> false; a userPrincipalName with true) to target_spn, bound to
 * <binding> (RFC 5929 tls-server-end-point application data; NULL: none).
 * <cb> is called once on the worker's loop, through <post>, unless the job is
 * cancelled first. NULL when memory is short. */
struct krb_job *krb_token_start(struct krb *k, const char *user, bool enterprise,
                                const unsigned char *binding, size_t binding_len,
                                krb_post_fn post, void *post_arg, krb_done_cb cb, void *arg);

/* Abandons <j>: its callback is never called (the exchange, if running,
 * finishes and its credential is still cached; a job still queued is not
 * run, and one waiting for another job's exchange for the same user stops
 * waiting). From the worker's loop only. */
void krb_job_cancel(struct krb_job *j);

/* KDC exchanges made (S4U2Self) and tokens made from a cached credential. */
void krb_counters(struct krb *k, uint64_t *exchanges, uint64_t *cache_hits);

/* `certmapd map --delegate`: S4U2Self and S4U2Proxy for <user>, synchronously,
 * and what came of them on <out>: each ticket's client and service principals,
 * flags and end time, or the KDC's refusal. 0 delegated, 1 refused, 2 no KDC. */
int krb_explain(struct krb *k, const char *user, bool enterprise, FILE *out);

/* The name delegation impersonates for the mapped account, as <c> says:
 * "sam@REALM" (REALM from principal; <sam> may be "NETBIOS\sam") or the <upn>
 * as an enterprise name. NULL when the account lacks the attribute; the
 * caller frees. <*enterprise> tells which. */
char *krb_user_name(const struct conf *c, const char *sam, const char *upn, bool *enterprise);

#endif
