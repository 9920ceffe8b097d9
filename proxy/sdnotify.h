/* systemd's notify protocol (sd_notify(3)), spoken directly: one datagram per state change. */
#ifndef CORRAL_SDNOTIFY_H
#define CORRAL_SDNOTIFY_H

#include <stdbool.h>
#include <stdint.h>

/*
 * Connects a datagram socket to $NOTIFY_SOCKET ("/path" or "@abstract") once, at start-up,
 * so that notifications keep working after the privilege drop. No NOTIFY_SOCKET: every call
 * below is a no-op. Returns 0, or a negative errno (the daemon then runs without notify).
 */
int sdnotify_open(void);
/* Sends msg (e.g. "READY=1\nSTATUS=serving") as one datagram. 0, or a negative errno. */
int sdnotify_send(const char *msg);
bool sdnotify_on(void);
/*
 * $WATCHDOG_USEC (when $WATCHDOG_PID is unset or ours): how often to send WATCHDOG=1, which is
 * half the interval systemd waits. 0 = no watchdog.
 */
uint64_t sdnotify_watchdog_ms(void);
void sdnotify_close(void);

#endif
