/* Secret files named by the configuration ([ldap] bind_password_file): read
 * once to validate at load time (so that `certmapd -t` refuses what start-up
 * would), and again by whoever needs the secret, which is then wiped. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "conf/conf.h"

/* A password file is a few dozen bytes; anything large is a wrong path. */
#define SECRET_FILE_MAX 4096

char *conf_secret_read(const char *path, size_t *len, char *err, size_t errlen)
{
    int fd = -1;
    char *buf = NULL;
    size_t n = 0;
    struct stat st;

    if (path == NULL || *path == '\0') {
        snprintf(err, errlen, "no file is set");
        goto fail;
    }
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0 || fstat(fd, &st) != 0) {
        snprintf(err, errlen, "cannot read \"%s\": %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "cannot read \"%s\": not a regular file", path);
        goto fail;
    }
    buf = malloc(SECRET_FILE_MAX + 1);
    if (buf == NULL) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    for (;;) {
        ssize_t r = read(fd, buf + n, SECRET_FILE_MAX + 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            snprintf(err, errlen, "cannot read \"%s\": %s", path, strerror(errno));
            goto fail;
        }
        if (r == 0)
            break;
        n += (size_t)r;
        if (n > SECRET_FILE_MAX) {
            snprintf(err, errlen, "\"%s\" is longer than %d bytes", path,
                     SECRET_FILE_MAX);
            goto fail;
        }
    }
    /* Editors add a newline; the password never ends with one. */
    if (n > 0 && buf[n - 1] == '\n')
        n--;
    if (n > 0 && buf[n - 1] == '\r')
        n--;
    /* An empty password turns a simple bind into an anonymous one (RFC 4513 5.1.2). */
    if (n == 0) {
        snprintf(err, errlen, "\"%s\" is empty", path);
        goto fail;
    }
    if (memchr(buf, '\0', n) != NULL) {
        snprintf(err, errlen, "\"%s\" has a NUL byte in the secret", path);
        goto fail;
    }
    buf[n] = '\0';
    close(fd);
    *len = n;
    return buf;
fail:
    if (buf != NULL)
        conf_secret_free(buf, SECRET_FILE_MAX + 1);
    if (fd >= 0)
        close(fd);
    return NULL;
}

void conf_secret_free(char *pw, size_t len)
{
    if (pw == NULL)
        return;
    explicit_bzero(pw, len);
    free(pw);
}
