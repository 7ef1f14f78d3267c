#include "common/log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

/* Read by every thread; a reload may change it. */
static _Atomic int max_level = CM_LOG_INFO;
static const char *const level_names[] = {"error", "warn", "info", "debug"};

void cm_log_set_level(enum log_level level)
{
    atomic_store_explicit(&max_level, (int)level, memory_order_relaxed);
}

enum log_level cm_log_get_level(void)
{
    return (enum log_level)atomic_load_explicit(&max_level, memory_order_relaxed);
}

__attribute__((format(printf, 2, 0))) static void vlog(enum log_level level, const char *fmt,
                                                    va_list ap)
{
    char line[2048];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = (int)strftime(line, sizeof line, "%Y-%m-%dT%H:%M:%SZ", &tm);
    n += snprintf(line + n, sizeof line - (size_t)n, " certmapd[%d] %s: ", (int)getpid(),
                  level_names[level]);
    int m = vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    if (m < 0)
        m = 0;
    n = (size_t)n + (size_t)m >= sizeof line - 1 ? (int)sizeof line - 2 : n + m;
    line[n++] = '\n';
    /* One write per line so lines from several workers never interleave. */
    if (write(STDERR_FILENO, line, (size_t)n) < 0) {
        /* nowhere left to report it */
    }
}

void cm_log(enum log_level level, const char *fmt, ...)
{
    if ((int)level > atomic_load_explicit(&max_level, memory_order_relaxed))
        return;
    va_list ap;
    va_start(ap, fmt);
    vlog(level, fmt, ap);
    va_end(ap);
}

void cm_fatal(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlog(CM_LOG_ERROR, fmt, ap);
    va_end(ap);
    exit(1);
}
