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

#define CONF_MAX_LISTEN 16
/* [server] max_connections' upper bound (Linux's default fs.nr_open is 2^20). */
#define CONF_MAX_CONNECTIONS 16777216
#define CONF_MAX_URIS 8
#define CONF_MAX_LOCATIONS 64
#define CONF_KEY_SLOTS 160 /* at least the number of rows in the key table */

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
    unsigned max_connections;    /* client connections, all workers; 0 = from the open-files limit */

    /* [tls] */
    char *certificate;
    char *private_key;
    int min_protocol;            /* TLS1_2_VERSION or TLS1_3_VERSION (numeric, no OpenSSL include here) */
    bool builtin_key_methods;    /* tls/keymeth.c */
    char *ciphers;               /* OpenSSL cipher string for TLS 1.2; NULL: CONF_TLS_CIPHERS */
    char *ciphersuites;          /* TLS 1.3 suites; NULL: CONF_TLS_CIPHERSUITES */
    char *groups;                /* key exchange groups; NULL: CONF_TLS_GROUPS */

    /* [client_certificate] */
    enum cert_mode cert_mode;
    char *trust_anchors;
    char *trusted_issuers;
    char *crl_file;              /* NULL: no revocation checking */
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

    /* [ldap] */
    char *ldap_uri[CONF_MAX_URIS];
    size_t n_ldap_uri;
    char *base_dn;
    char *bind_dn;
    char *bind_password_file;
    char *ldap_ca_file;
    uint64_t ldap_timeout_ms;

    /* [backend] */
    char *backend_url_text;
    struct conf_backend_url backend;
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

    /* [location PATH], in file order; see conf_location_for() */
    struct conf_location locations[CONF_MAX_LOCATIONS];
    size_t n_locations;

    /* Which sections appeared, so that later stages know what was configured. */
    bool has_mapping_section;
    bool has_ldap_section;
    bool has_delegation_section;

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

/* Frees a snapshot from conf_load(); NULL is fine. */
void conf_free(struct conf *c);

/* The location whose prefix is the longest prefix of <path> (length <len>),
 * or NULL when none matches. */
const struct conf_location *conf_location_for(const struct conf *c, const char *path, size_t len);

/* Prints the key table (section, key, default, description) for --help-config. */
void conf_print_keys(void *fp /* FILE * */);

/* The secret in file <path> (a password), one trailing newline stripped.
 * Returns a heap copy the caller wipes with conf_secret_free, or NULL with a
 * reason in <err> (unreadable, not a regular file, empty, too long, NUL inside). */
char *conf_secret_read(const char *path, size_t *len, char *err, size_t errlen);
void conf_secret_free(char *secret, size_t len);

/* Parsers for values, exposed for unit tests. Return 0 or -1 with a reason in <why>. */
int conf_parse_size(const char *s, size_t *out, const char **why);
int conf_parse_duration_ms(const char *s, uint64_t *out, const char **why);

#endif
