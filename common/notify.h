/* The service manager's readiness protocol (systemd's sd_notify): what
 * `Type=notify` waits for. Each call is one datagram to $NOTIFY_SOCKET; when
 * that is unset (not started by systemd, or `certmapd -t`) every call does
 * nothing. Thread-safe; no state is kept here, so a configuration reload has
 * nothing to rebuild. */
#ifndef CM_NOTIFY_H
#define CM_NOTIFY_H

/* READY=1: the listeners are bound, the first directory bind is done and the
 * workers run. Also sent after a reload has finished (then it ends RELOADING). */
void notify_ready(void);

/* RELOADING=1 with MONOTONIC_USEC (what systemd 253+ asks of a notify-reload
 * service; 252 ignores the timestamp). Call notify_ready() when the reload
 * has finished, whether it was applied or refused. */
void notify_reloading(void);

/* STOPPING=1: the drain has started; no new connection is accepted. */
void notify_stopping(void);

/* STATUS=<text>: one line that `systemctl status` shows. Control characters
 * (a newline would start another assignment) are written as '?'. */
void notify_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
