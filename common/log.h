/* Diagnostic log (not the access log): one line per event to stderr, with
 * time, level and message. Thread-safe: each line is written with one write(2). */
#ifndef CM_LOG_H
#define CM_LOG_H

enum log_level { CM_LOG_ERROR = 0, CM_LOG_WARN, CM_LOG_INFO, CM_LOG_DEBUG };

/* Messages above <level> are dropped. Set once at start-up. */
void cm_log_set_level(enum log_level level);
enum log_level cm_log_get_level(void);

void cm_log(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_error(...) cm_log(CM_LOG_ERROR, __VA_ARGS__)
#define log_warn(...) cm_log(CM_LOG_WARN, __VA_ARGS__)
#define log_info(...) cm_log(CM_LOG_INFO, __VA_ARGS__)
#define log_debug(...) cm_log(CM_LOG_DEBUG, __VA_ARGS__)

/* Start-up failures only: logs and exits with status 1. */
void cm_fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

#endif
