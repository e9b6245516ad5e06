"""A network namespace per unit, as each Kubernetes pod has, joined to the host by loopback relays.

The charm renders ``listen_addr = *`` (right in a pod: its own interfaces only). Run on the host,
that would open PgBouncer on every interface of the machine, and two units of one application
would fight over one ``listen_port``. So each unit whose services run for real gets a
:class:`PodNetwork`: a private network namespace holding only its own ``lo``, in which the unit's
PgBouncer processes run (``nsenter --net``), plus two kinds of TCP relays run by threads of the
test process:

- :meth:`PodNetwork.reach`: a host port (a PostgreSQL server) made reachable inside the pod at
  the same ``127.0.0.1:<port>``, so the endpoints the PostgreSQL charm publishes work unchanged;
- :meth:`PodNetwork.publish`: a port inside the pod (PgBouncer's ``listen_port``) made reachable
  from the host at ``127.0.0.1:<host port>``: what the Kubernetes service gives a client.

Every listening socket is on ``127.0.0.1``, of the host or of the pod. Sockets belong to the
network namespace of the thread that created them, so a relay creates each socket from a short
thread that first enters the wanted namespace (``setns(2)``, which Python 3.11 does not wrap);
the test process itself never leaves the host namespace. The namespace is held by one process
(``sleep``, with ``SIGKILL`` as parent-death signal) stopped by its own PID in :meth:`close`.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import socket
import subprocess
import threading
from collections.abc import Callable
from typing import TypeVar

from harness.servers.system import free_port

logger = logging.getLogger(__name__)

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
LOOPBACK = "127.0.0.1"
_libc = ctypes.CDLL(None, use_errno=True)


def _in_netns(ns_path: str | None, make: Callable[[], socket.socket]) -> socket.socket:
    """Run ``make`` in a thread that entered the network namespace at ``ns_path`` (None: host)."""
    if ns_path is None:
        return make()
    box: dict[str, object] = {}

    def run() -> None:
        try:
            fd = os.open(ns_path, os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({ns_path}): {os.strerror(err)}")
            finally:
                os.close(fd)
            box["sock"] = make()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, name="pgbk8s-setns")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["sock"]  # type: ignore[return-value]


def _listener(port: int, address: str = LOOPBACK) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, port))
    sock.listen(64)
    sock.settimeout(0.2)
    return sock


class Relay:
    """Accepts on one socket and pipes each connection to a new upstream socket.

    Args:
        listener: a bound, listening socket (in whichever namespace it was made).
        target_ns: network namespace file of the upstream side, None for the host.
        target_port: the upstream port on that namespace's ``127.0.0.1``.
        target_address: the upstream loopback address, ``127.0.0.1`` unless said otherwise.
    """

    def __init__(
        self,
        listener: socket.socket,
        target_ns: str | None,
        target_port: int,
        target_address: str = LOOPBACK,
    ):
        self.listener = listener
        self.port = listener.getsockname()[1]
        self.target_ns = target_ns
        self.target_port = target_port
        self.target_address = target_address
        self._stop = threading.Event()
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._accept_loop, name=f"pgbk8s-relay-{self.port}", daemon=True
        )
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = _in_netns(
                    self.target_ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                )
                upstream.settimeout(5)
                upstream.connect((self.target_address, self.target_port))
                upstream.settimeout(None)
            except OSError as exc:
                logger.info("relay %s: upstream %s refused: %s", self.port, self.target_port, exc)
                client.close()
                continue
            client.settimeout(None)
            with self._lock:
                self._open.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
        except OSError:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        finally:
            with self._lock:
                if src in self._open:
                    self._open.discard(src)
                    src.close()

    def close(self) -> None:
        """Stop accepting and cut every relayed connection."""
        self._stop.set()
        self._thread.join(timeout=5)
        self.listener.close()
        with self._lock:
            for sock in list(self._open):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()


def host_listeners(port: int) -> list[str]:
    """Addresses of the host's network namespace with a TCP socket listening on ``port``.

    Read from ``/proc/self/net/tcp`` and ``tcp6`` (the test process's own namespace, the
    host's), e.g. ``["127.0.0.1"]``; ``"0.0.0.0"`` or ``"::"`` would mean every interface.
    """
    found: list[str] = []
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        path = f"/proc/self/net/{name}"
        if not os.path.exists(path):
            continue
        with open(path) as table:
            next(table)
            for line in table:
                fields = line.split()
                local, state = fields[1], fields[3]
                addr_hex, port_hex = local.split(":")
                if state != "0A" or int(port_hex, 16) != port:  # 0A: LISTEN
                    continue
                raw = bytes.fromhex(addr_hex)
                # The kernel prints each 32-bit word in host (little-endian) order.
                raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                found.append(socket.inet_ntop(family, raw))
    return sorted(found)


class PodNetwork:
    """One unit's private network namespace and the relays joining it to the host."""

    def __init__(self) -> None:
        self._holder = subprocess.Popen(
            [
                "setpriv",
                "--pdeathsig",
                "SIGKILL",
                "--",
                "unshare",
                "--net",
                "--",
                "sh",
                "-c",
                "ip link set lo up && echo up && exec sleep infinity",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert self._holder.stdout is not None
        line = self._holder.stdout.readline().strip()
        if line != "up":
            err = self._holder.stderr.read() if self._holder.stderr else ""
            self.close()
            raise RuntimeError(f"could not create a network namespace: {line} {err}")
        self.ns_path = f"/proc/{self._holder.pid}/ns/net"
        self._reached: dict[tuple[str, int], Relay] = {}
        self._published: dict[int, Relay] = {}

    def run_inside(self, fn: Callable[[], T]) -> T:
        """Call ``fn`` in a thread inside the pod's network namespace; its return value.

        A charm's hooks run in the charm container, which shares the pod's network: an action
        that reaches the workload on ``127.0.0.1`` runs this way.
        """
        box: dict[str, object] = {}

        def make() -> socket.socket:
            box["value"] = fn()
            return socket.socket()  # _in_netns wants a socket; closed at once

        _in_netns(self.ns_path, make).close()
        return box["value"]  # type: ignore[return-value]

    def enter_argv(self) -> list[str]:
        """Command prefix that runs a command inside the pod's network namespace (execs in place)."""
        return ["nsenter", f"--net={self.ns_path}", "--"]

    def reach(self, host_port: int, address: str = LOOPBACK) -> None:
        """Make ``<address>:<host_port>`` of the host answer at the same address in the pod.

        ``address`` is a loopback address (``127.0.0.2`` for a second replica on one port).
        """
        if (address, host_port) in self._reached:
            return
        listener = _in_netns(self.ns_path, lambda: _listener(host_port, address))
        self._reached[address, host_port] = Relay(listener, None, host_port, address)

    def publish(self, pod_port: int, host_port: int | None = None) -> int:
        """Make the pod's ``127.0.0.1:<pod_port>`` reachable from the host; the host port."""
        relay = self._published.get(pod_port)
        if relay is not None:
            return relay.port
        port = host_port or free_port()
        relay = Relay(_listener(port), self.ns_path, pod_port)
        self._published[pod_port] = relay
        return relay.port

    def cut(self) -> None:
        """Drop every relayed connection and relay (the pod keeps its namespace)."""
        for relay in [*self._reached.values(), *self._published.values()]:
            relay.close()
        self._reached.clear()
        self._published.clear()

    def close(self) -> None:
        """Close the relays and stop the namespace's holder process by its PID."""
        self.cut()
        if self._holder.poll() is None:
            self._holder.kill()
        self._holder.wait(timeout=10)
        for stream in (self._holder.stdout, self._holder.stderr):
            if stream is not None:
                stream.close()
