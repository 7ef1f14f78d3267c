/* certmapd configuration: parsed once from an INI file into an immutable
 * snapshot. Runtime code reads it only through `const struct conf *`.
 * Keys, defaults and meanings are a contract (DESIGN.md, README.md). */
#ifndef CM_CONF_H
#define CM_CONF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

enum cert_mode { CERT_IGNORE = 0, CERT_ACCEPT, CERT_REQUIRE };
/* not "map_source": enum and struct tags share one namespace (mapping.h) */
enum map_source_kind { MAP_SOURCE_LDAP = 0, MAP_SOURCE_LDIF };
enum map_enforcement { ENFORCE_DISABLED = 0, ENFORCE_COMPATIBILITY = 1, ENFORCE_FULL = 2 };
enum map_method { METHOD_SID = 0, METHOD_ALTSECID, METHOD_UPN, METHOD_DNS, METHOD_MAX };
enum deleg_mode { DELEG_OFF = 0, DELEG_KERBEROS };
enum deleg_impersonate { IMPERSONATE_SAM = 0, IMPERSONATE_UPN };
enum deleg_send { SEND_FIRST = 0, SEND_ALWAYS };
enum deleg_binding { BINDING_AUTO = 0, BINDING_OFF };
enum revocation_unknown { REVOCATION_REFUSE = 0, REVOCATION_ALLOW };

#define CONF_MAX_LISTEN 16
#define CONF_MAX_PP_FROM 32
/* [server] max_connections' upper bound (Linux's default fs.nr_open is 2^20). */
#define CONF_MAX_CONNECTIONS 16777216
#define CONF_MAX_URIS 8
#define CONF_MAX_BACKENDS 8
#define CONF_MAX_LOCATIONS 64
#define CONF_KEY_SLOTS 160 /* at least the number of rows in the key table */
#define CONF_SECTION_SLOTS 16 /* at least the number of section kinds */

/* [tls] defaults, in OpenSSL's syntax: Mozilla's "intermediate" profile
 * without DHE. TLS 1.2: forward secrecy (ECDHE) and AEAD only, no CBC; the
 * server's order wins. TLS 1.3: OpenSSL's three suites. Groups: Mozilla's, and
 * P-521, because on TLS 1.2 OpenSSL refuses a client certificate whose EC
 * curve is not among them (illegal_parameter). conf/keys.c shows and applies
 * them; tls/ctx.c uses them for a struct conf built without conf_load. */
#define CONF_TLS_CIPHERS                                                                           \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"                                   \
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"                                   \
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
#define CONF_TLS_CIPHERSUITES                                                                      \
    "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256"
#define CONF_TLS_GROUPS "X25519:prime256v1:secp384r1:secp521r1"

struct conf_listen {
    char *text;                  /* as written: "0.0.0.0:443", "[::1]:8443" */
    struct sockaddr_storage addr;
    socklen_t addrlen;
    bool proxy_protocol;         /* "... proxy_protocol": a PROXY header (v1 or v2) comes first */
};

/* A network in CIDR form ([server] proxy_protocol_from). */
struct conf_cidr {
    int family;                  /* AF_INET or AF_INET6 */
    uint8_t addr[16];            /* network byte order, host bits zero */
    unsigned bits;               /* prefix length */
};

struct conf_location {
    char *prefix;                /* path prefix from [location PATH] */
    size_t prefix_len;
    enum cert_mode client_certificate; /* defaults to [client_certificate] mode */
    bool mapping;                /* default on */
    int line;                    /* where the section started, for messages */
};

struct conf_backend_url {
    bool https;
    char *host;                  /* host name or address, without brackets */
    char *port;                  /* service as text: "80", "443", "8080" */
    char *host_header;           /* Host header value sent upstream when the client sent none */
    int line;                    /* where the URL was written, 0: not from a file */
};

struct conf {
    char *path;                  /* the file this was loaded from */

    /* [server] */
    struct conf_listen listen[CONF_MAX_LISTEN];
    size_t n_listen;
    unsigned workers;            /* 0 in the file = one per core; resolved here to >= 1 */
    char *user;                  /* NULL: no privilege drop */
    char *access_log;            /* "stderr", "off" or a path */
    int log_level;               /* enum log_level */
    bool detailed_errors;
    size_t max_request_head;
    uint64_t header_timeout_ms;
    uint64_t keepalive_timeout_ms;
    uint64_t body_timeout_ms;      /* inactivity while receiving a request body */
    struct conf_cidr pp_from[CONF_MAX_PP_FROM]; /* who may send a PROXY header; none: anyone */
    size_t n_pp_from;
    unsigned max_connections;    /* client connections, all workers; 0 = from the open-files limit */
    unsigned reclaim_idle;       /* idle client connections closed to make room; 0 = off */

    /* [tls] */
    char *certificate;
    char *private_key;
    int min_protocol;            /* TLS1_2_VERSION or TLS1_3_VERSION (numeric, no OpenSSL include here) */
    bool builtin_key_methods;    /* tls/keymeth.c */
    char *ciphers;               /* OpenSSL cipher string for TLS 1.2; NULL: CONF_TLS_CIPHERS */
    char *ciphersuites;          /* TLS 1.3 suites; NULL: CONF_TLS_CIPHERSUITES */
    char *groups;                /* key exchange groups; NULL: CONF_TLS_GROUPS */
    char *ticket_keys;           /* session-ticket key file; NULL: random keys (tls/tickets.c) */
    uint64_t ticket_key_lifetime_ms; /* random keys: a new one this often */

    /* [client_certificate] */
    enum cert_mode cert_mode;
    char *trust_anchors;
    char *trusted_issuers;
    char *crl_file;              /* NULL: no revocation checking */
    uint64_t crl_refresh_ms;     /* how often crl_file is checked for a change; 0: 5 min */
    enum revocation_unknown revocation_unknown; /* no current CRL for the issuer */
    bool crl_fetch;              /* CRLs from the leaves' http:// CRL distribution points */
    uint64_t crl_fetch_timeout_ms; /* longest a request waits for a fetch; 0: 5 s */
    size_t crl_fetch_max_size;   /* largest CRL fetched; 0: 10M */
    bool ocsp;                   /* ask the leaf's OCSP responder when no current CRL says */
    unsigned verify_depth;
    bool require_client_auth_eku;
    bool negotiate_at_handshake;

    /* [mapping] */
    enum map_source_kind map_source;
    char *ldif_file;
    enum map_method methods[METHOD_MAX];
    size_t n_methods;
    enum map_enforcement enforcement;
    uint64_t cache_ttl_ms;
    uint64_t negative_cache_ttl_ms;
    size_t cache_entries;
    char *netbios_domain;        /* NULL: the source's own (LDAP), or none (ldif) */
    /* [mapping] shared_cache: the identity cache also in Redis (shcache/) */
    char *shared_cache;          /* as written, "redis://127.0.0.1:6379/0"; NULL: none */
    char *shared_cache_host;     /* an IP address (no name: a worker never blocks on DNS) */
    unsigned shared_cache_port;
    unsigned shared_cache_db;
    char *shared_cache_password_file; /* NULL: no AUTH */
    char *shared_cache_key_file; /* HMAC key over every value; required with shared_cache */
    uint64_t shared_cache_timeout_ms;

    /* [ldap] */
    char *ldap_uri[CONF_MAX_URIS];
    size_t n_ldap_uri;
    char *base_dn;
    char *bind_dn;
    char *bind_password_file;
    char *ldap_ca_file;
    uint64_t ldap_timeout_ms;

    /* [backend] */
    char *backend_url_text;      /* the first url as written */
    struct conf_backend_url backends[CONF_MAX_BACKENDS]; /* every url, in file order */
    size_t n_backends;
    struct conf_backend_url backend; /* a copy of backends[0] (its strings are not its own) */
    uint64_t backend_fail_timeout_ms; /* a server that failed to connect is skipped this long */
    char *backend_health_check;  /* "GET /path" or "HEAD /path"; NULL: no active checks */
    uint64_t backend_health_interval_ms;
    uint64_t backend_health_timeout_ms;
    char *backend_ca_file;
    uint64_t backend_connect_timeout_ms;
    uint64_t backend_read_timeout_ms;
    unsigned keepalive_connections;

    /* [buffering] */
    size_t upload_read_ahead_size;

    /* [delegation]: Kerberos constrained delegation to the backend (krb/) */
    enum deleg_mode deleg_mode;
    char *deleg_principal;       /* the gateway's service account, "svc-seg@REALM" */
    char *deleg_keytab;
    char *deleg_target_spn;      /* "HTTP/host"; unset: HTTP/<backend host> */
    char *deleg_krb5_conf;       /* NULL: the system's */
    enum deleg_impersonate deleg_impersonate;
    enum deleg_send deleg_send;
    enum deleg_binding deleg_binding;
    uint64_t deleg_timeout_ms;
    size_t deleg_cache_entries;

    /* [metrics] */
    struct conf_listen metrics_listen; /* valid when has_metrics_listen */
    bool has_metrics_listen;
    uint64_t metrics_healthz_timeout_ms; /* each backend connect of /healthz */

    /* [location PATH], in file order; see conf_location_for() */
    struct conf_location locations[CONF_MAX_LOCATIONS];
    size_t n_locations;

    /* Which sections appeared, so that later stages know what was configured. */
    bool has_mapping_section;
    bool has_ldap_section;
    bool has_delegation_section;

    /* Each section's keys as the file set them ("key=value\n", in file
     * order; locations excepted), for conf_section_same(). */
    char *section_text[CONF_SECTION_SLOTS];

    /* The line of the value being parsed, for parsers that record where each
     * value of a repeatable key came from (0: not from a file). */
    int parse_line;

    /* Line of each key of the table that was set (0: not set), for conf_where(). */
    int key_line[CONF_KEY_SLOTS];
};

/* Loads and validates <path>. On success returns a new snapshot in <*out> and 0.
 * On failure returns -1 and writes "FILE:LINE: reason" (or "FILE: reason") to
 * <err>. Checks that referenced files are readable; does not parse PEM. */
int conf_load(const char *path, struct conf **out, char *err, size_t errlen);

/* "FILE:LINE: [section] key" for key <key> of section <section> ("tls",
 * "certificate"), so that errors found after loading (a PEM that does not
 * parse, a backend that does not resolve) point at the line that set it:
 * "FILE: [section] key" when the key was not set. Writes it into <buf>, returns <buf>. */
const char *conf_where(const struct conf *c, const char *section, const char *key, char *buf,
                       size_t len);

/* Whether section <section> ("mapping", "ldap") sets the same keys to the
 * same values, as written, in <a> and <b>: a reload keeps what depends only
 * on it (the identity cache). Files named are not compared. */
bool conf_section_same(const struct conf *a, const struct conf *b, const char *section);

/* The keys section <section> ("mapping", "ldap") set, as written
 * ("key=value\n" in file order), or "" when it set none. Never NULL. */
const char *conf_section_text(const struct conf *c, const char *section);

/* Frees a snapshot from conf_load(); NULL is fine. */
void conf_free(struct conf *c);

/* The location whose prefix is the longest prefix of <path> (length <len>),
 * or NULL when none matches. */
const struct conf_location *conf_location_for(const struct conf *c, const char *path, size_t len);

/* Prints the key table (section, key, default, description) for --help-config. */
void conf_print_keys(void *fp /* FILE * */);

/* The same table as roff: the KEYS section of certmapd.conf(5) (conf/man.c). */
void conf_print_keys_man(void *fp /* FILE * */);

/* The secret in file <path> (a password), one trailing newline stripped.
 * Returns a heap copy the caller wipes with conf_secret_free, or NULL with a
 * reason in <err> (unreadable, not a regular file, empty, too long, NUL inside). */
char *conf_secret_read(const char *path, size_t *len, char *err, size_t errlen);
void conf_secret_free(char *secret, size_t len);

/* Parsers for values, exposed for unit tests. Return 0 or -1 with a reason in <why>. */
int conf_parse_size(const char *s, size_t *out, const char **why);
int conf_parse_duration_ms(const char *s, uint64_t *out, const char **why);

#endif
