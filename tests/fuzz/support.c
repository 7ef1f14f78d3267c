/* tests/fuzz: helpers shared by the harnesses. */
#include "tests/fuzz/fuzz.h"

#include <fcntl.h>
#include <string.h>
#include <unistd.h>

const char *fuzz_temp_file(const char *tag, const uint8_t *data, size_t size)
{
    static char path[128];
    snprintf(path, sizeof path, "/tmp/certmapd-fuzz-%s-%ld", tag, (long)getpid());
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return NULL;
    size_t off = 0;
    while (off < size) {
        ssize_t n = write(fd, data + off, size - off);
        if (n <= 0) {
            close(fd);
            return NULL;
        }
        off += (size_t)n;
    }
    close(fd);
    return path;
}
