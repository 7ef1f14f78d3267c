#include "tests/support/tlspair.h"

#include <stdbool.h>
#include <string.h>

/* One handshake step of <s>; false on a real failure. */
static bool step(SSL *s, bool *done)
{
    if (*done)
        return true;
    int r = SSL_do_handshake(s);
    if (r == 1) {
        *done = true;
        return true;
    }
    int e = SSL_get_error(s, r);
    return e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE;
}

int tlspair_handshake(SSL *cl, SSL *sv)
{
    BIO *bc = NULL, *bs = NULL;
    if (BIO_new_bio_pair(&bc, 0, &bs, 0) != 1)
        return -1;
    SSL_set_connect_state(cl);
    SSL_set_accept_state(sv);
    SSL_set_bio(cl, bc, bc);
    SSL_set_bio(sv, bs, bs);
    bool cdone = false, sdone = false;
    for (int i = 0; i < 50 && !(cdone && sdone); i++) {
        if (!step(cl, &cdone) || !step(sv, &sdone))
            break;
    }
    char buf[8] = "";
    if (cdone && sdone && SSL_write(cl, "ping", 4) == 4 && SSL_read(sv, buf, sizeof buf) == 4 &&
        SSL_write(sv, "pong", 4) == 4 && SSL_read(cl, buf, sizeof buf) == 4 &&
        memcmp(buf, "pong", 4) == 0)
        return 0;
    return -1;
}
