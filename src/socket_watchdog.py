"""A bound on a connection that no timeout of the server's can give: its socket is shut down.

A server alive to TCP but stopped (SIGSTOP, a frozen VM) still acknowledges, so neither TCP's
timeouts nor ``statement_timeout`` end a read on it; PgBouncer's console has no
``statement_timeout`` at all, and ``PAUSE <db>`` waits for the database's servers. The watchdog
shuts the connection's socket down when it outlives ``seconds``: a blocked read then returns at
once with an error. Used by the backend connections (:mod:`postgres.connection`) and the
console's (:mod:`pgbouncer.console`).
"""

from __future__ import annotations

import socket
import threading
from typing import Any


class SocketWatchdog:
    """Shuts ``conn``'s socket down after ``seconds`` (at least 0.1), unless cancelled first."""

    def __init__(self, conn: Any, seconds: float):
        self.seconds = max(seconds, 0.1)
        self.fired = False
        self._lock = threading.Lock()
        self._done = False
        self._fd = conn.fileno()
        self._timer = threading.Timer(self.seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        # Under the lock: once cancel() ran, the descriptor may belong to something else.
        with self._lock:
            if self._done:
                return
            self.fired = True
            try:
                sock = socket.socket(fileno=self._fd)
            except OSError:
                return
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            finally:
                sock.detach()

    def cancel(self) -> None:
        """Disarm; called before the connection is closed."""
        with self._lock:
            self._done = True
        self._timer.cancel()
