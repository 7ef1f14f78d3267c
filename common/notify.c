/* sd_notify wrappers (common/notify.h). */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <systemd/sd-daemon.h>

#include "common/log.h"
#include "common/notify.h"

/* A failure to tell systemd is logged, never fatal: the service manager
 * then times the start out and says so itself. */
static void send_state(const char *state)
{
    int rc = sd_notify(0, state);
    if (rc < 0)
        log_warn("sd_notify \"%.40s\": %s", state, strerror(-rc));
}

void notify_ready(void)
{
    send_state("READY=1");
}

void notify_reloading(void)
{
    struct timespec ts;
    char msg[64];

    if (clock_gettime(CLOCK_MONOTONIC, &ts) < 0) {
        send_state("RELOADING=1");
        return;
    }
    unsigned long long usec =
        (unsigned long long)ts.tv_sec * 1000000ull + (unsigned long long)ts.tv_nsec / 1000ull;
    snprintf(msg, sizeof msg, "RELOADING=1\nMONOTONIC_USEC=%llu", usec);
    send_state(msg);
}

void notify_stopping(void)
{
    send_state("STOPPING=1");
}

void notify_status(const char *fmt, ...)
{
    char msg[512] = "STATUS=";
    size_t off = strlen(msg);
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg + off, sizeof msg - off, fmt, ap);
    va_end(ap);
    for (char *p = msg + off; *p != '\0'; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
    send_state(msg);
}
