"""Pebble's HTTP API on a unix socket, over the project's one Pebble stand-in.

Juju's charm container reaches the workload container's Pebble at
``/charm/containers/<name>/pebble.socket`` over HTTP. This adapter answers the calls our charm
(and ops itself) make by handing them to a :class:`harness.pebble_standin.PebbleStandIn`: the
plan's layers, the services' statuses, and files under the container's mounts (a path outside
every mount is "not found", as the cgroup files are in the bench's prepared states).

- The bench (``bench/jujupath``) serves a stand-in without processes: a started service is only
  active, and ``exec`` is refused (HTTP 400). :meth:`PebbleStandIn.reset` puts the layers and
  statuses back before every measured hook.
- :func:`pebble_container` gives an ``ops.Container`` whose Pebble is a stand-in with real
  processes (:class:`harness.processes.PebbleProcessRunner`), so that a test drives the
  workload code itself (``pgbouncer.workload.Workload``) and PgBouncer runs as Pebble would run it.

Requests are served one at a time, from one thread that lives as long as the socket: processes
started for a request are forked from it and get their parent-death signal when it ends.

Every request is counted by path, so that a report can say how many Pebble calls a hook made.
"""

from __future__ import annotations

import contextlib
import json
import socketserver
import tempfile
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import ops
import yaml
from ops import JujuVersion, pebble

from harness.pebble_standin import PebbleError, PebbleStandIn
from harness.processes import PebbleProcessRunner


def _sync(result: Any, code: int = 200) -> dict[str, Any]:
    return {"type": "sync", "status-code": code, "status": "OK", "result": result}


def _error(message: str, code: int, kind: str = "") -> dict[str, Any]:
    result: dict[str, Any] = {"message": message}
    if kind:
        result["kind"] = kind
    return {"type": "error", "status-code": code, "status": "Bad Request", "result": result}


_NOW = "2026-11-30T00:00:00Z"


def _change(change_id: str, kind: str) -> dict[str, Any]:
    return {
        "id": change_id,
        "kind": kind,
        "summary": kind,
        "status": "Done",
        "tasks": [],
        "ready": True,
        "err": None,
        "spawn-time": _NOW,
        "ready-time": _NOW,
        "data": {},
    }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    @property
    def _server(self) -> _Server:
        """The server this handler serves: only ever a :class:`_Server`."""
        return cast(_Server, self.server)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: no access log on stderr."""

    def _send(self, body: dict[str, Any], code: int | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(code or body.get("status-code", 200))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            # ops streams pushed files (a generator body): HTTP/1.1 chunked encoding.
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _answer(self, call: Callable[[], Any]) -> None:
        """Send what the stand-in returns, or its error as Pebble words it."""
        try:
            result = call()
        except PebbleError as exc:
            code = 404 if exc.kind == "not-found" else 400
            self._send(_error(str(exc), code, exc.kind))
            return
        self._send(result)

    def do_GET(self) -> None:
        """Read-only calls."""
        url = urllib.parse.urlsplit(self.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        state = self._server.state
        state.calls[f"GET {url.path}"] += 1
        if url.path == "/v1/system-info":
            self._send(_sync({"version": "1.19.0-standin"}))
        elif url.path == "/v1/plan":
            plan, checks = state.plan(), state.checks()
            body = ({"services": plan} if plan else {}) | ({"checks": checks} if checks else {})
            self._send(_sync(yaml.safe_dump(body)))
        elif url.path == "/v1/services":
            names = [n for n in query.get("names", "").split(",") if n]
            out = [
                {
                    "name": name,
                    "startup": svc.get("startup", "disabled"),
                    "current": state.statuses.get(name, "inactive"),
                }
                for name, svc in sorted(state.plan().items())
                if not names or name in names
            ]
            self._send(_sync(out))
        elif url.path.startswith("/v1/changes/"):
            change_id = url.path.split("/")[3]
            self._send(_sync(_change(change_id, "change")))
        elif url.path == "/v1/files" and query.get("action") == "read":
            self._read_file(query.get("path", ""))
        elif url.path == "/v1/files" and query.get("action") == "list":
            path, itself = query.get("path", ""), query.get("itself") == "true"
            self._answer(lambda: _sync(self._entries(path, itself)))
        else:
            self._send(_error(f"not in the stand-in: GET {url.path}", 404))

    def _entries(self, path: str, itself: bool) -> list[dict[str, Any]]:
        return [
            {**entry, "last-modified": _NOW}
            for entry in self._server.state.list_files(path, itself)
        ]

    def _read_file(self, path: str) -> None:
        boundary = "standin-boundary"
        try:
            content = self._server.state.pull(path)
        except PebbleError as exc:
            error = {"kind": exc.kind or "generic-file-error", "message": str(exc)}
            meta: dict[str, Any] = _sync([{"path": path, "error": error}])
            parts = []
        else:
            meta = _sync([{"path": path}])
            parts = [
                f'--{boundary}\r\nContent-Disposition: form-data; name="files";'
                f' filename="{path}"\r\n\r\n'.encode()
                + content
                + b"\r\n"
            ]
        body = (
            b"".join(parts)
            + f'--{boundary}\r\nContent-Disposition: form-data; name="response"\r\n\r\n'.encode()
            + json.dumps(meta).encode()
            + f"\r\n--{boundary}--\r\n".encode()
        )
        self.send_response(200)
        self.send_header("Content-Type", f'multipart/form-data; boundary="{boundary}"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        """Calls that change something."""
        url = urllib.parse.urlsplit(self.path)
        state = self._server.state
        state.calls[f"POST {url.path}"] += 1
        raw = self._body()
        if url.path == "/v1/files" and self.headers.get_content_type() == "multipart/form-data":
            self._push(raw)
            return
        body = json.loads(raw or b"{}")
        if url.path == "/v1/files":
            self._file_action(body)
        elif url.path == "/v1/layers":
            layer = yaml.safe_load(body.get("layer") or "") or {}

            def add_layer() -> dict[str, Any]:
                state.add_layer(body["label"], layer, combine=bool(body.get("combine")))
                return _sync(True)

            self._answer(add_layer)
        elif url.path == "/v1/services":
            action, names = body.get("action"), list(body.get("services") or [])

            def services() -> dict[str, Any]:
                if action in ("replan", "autostart"):
                    getattr(state, action)()
                elif action in ("start", "stop", "restart"):
                    getattr(state, action)(names)
                else:
                    raise PebbleError(f"invalid action {action!r}")
                self._server.next_change += 1
                return {
                    "type": "async",
                    "status-code": 202,
                    "status": "Accepted",
                    "change": str(self._server.next_change),
                    "result": None,
                }

            self._answer(services)
        elif url.path == "/v1/signals":

            def send_signal() -> dict[str, Any]:
                state.signal(body.get("services") or [], body.get("signal", ""))
                return _sync(True)

            self._answer(send_signal)
        elif url.path == "/v1/exec":
            self._answer(lambda: state.exec(list(body.get("command") or [])))
        else:
            self._send(_error(f"not in the stand-in: POST {url.path}", 400))

    def _file_action(self, body: dict[str, Any]) -> None:
        state, results = self._server.state, []
        for item in body.get("dirs") or body.get("paths") or []:
            try:
                if body.get("action") == "make-dirs":
                    state.make_dir(
                        item["path"],
                        make_parents=bool(item.get("make-parents")),
                        permissions=int(item.get("permissions") or "755", 8),
                        **_owner(item),
                    )
                elif body.get("action") == "remove":
                    state.remove(item["path"], recursive=bool(item.get("recursive")))
            except PebbleError as exc:
                results.append(
                    {"path": item["path"], "error": {"kind": exc.kind, "message": str(exc)}}
                )
                continue
            results.append({"path": item["path"]})
        self._send(_sync(results))

    def _push(self, raw: bytes) -> None:
        boundary = self.headers.get_param("boundary")
        assert isinstance(boundary, str)
        metadata: dict[str, Any] = {}
        contents: dict[str, bytes] = {}
        for part in raw.split(f"--{boundary}".encode())[1:]:
            if part.startswith(b"--"):
                break
            head, _, data = part.partition(b"\r\n\r\n")
            data = data[:-2] if data.endswith(b"\r\n") else data
            if b'name="request"' in head:
                metadata = json.loads(data)
            elif b'name="files"' in head:
                filename = head.split(b'filename="', 1)[1].split(b'"', 1)[0].decode()
                contents[filename] = data
        results = []
        for item in metadata.get("files", []):
            try:
                self._server.state.push(
                    item["path"],
                    contents.get(item["path"], b""),
                    permissions=int(item.get("permissions") or "644", 8),
                    make_dirs=bool(item.get("make-dirs")),
                    **_owner(item),
                )
            except PebbleError as exc:
                error = {"kind": exc.kind, "message": str(exc)}
                results.append({"path": item["path"], "error": error})
                continue
            results.append({"path": item["path"]})
        self._send(_sync(results))


def _owner(item: dict[str, Any]) -> dict[str, Any]:
    """The owner fields of a file request, as the stand-in takes them."""
    return {
        "user": item.get("user") or None,
        "group": item.get("group") or None,
        "user_id": item.get("user-id"),
        "group_id": item.get("group-id"),
    }


class _Server(socketserver.UnixStreamServer):
    def __init__(self, path: str, state: PebbleStandIn):
        self.state = state
        self.next_change = 0
        super().__init__(path, _Handler)

    def get_request(self):  # type: ignore[override]
        """Unix sockets have no client address; the HTTP handler wants a tuple."""
        request, _ = super().get_request()
        return request, ("pebble-client", 0)


class PebbleSocket:
    """The adapter served from a thread; :meth:`close` stops it and removes the socket.

    Assign :attr:`state` to serve another container's stand-in.
    """

    def __init__(self, socket_path: Path, state: PebbleStandIn):
        socket_path.parent.mkdir(parents=True, exist_ok=True)
        if socket_path.exists():
            socket_path.unlink()
        self.socket_path = socket_path
        self._server = _Server(str(socket_path), state)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def state(self) -> PebbleStandIn:
        """The stand-in served."""
        return self._server.state

    @state.setter
    def state(self, value: PebbleStandIn) -> None:
        self._server.state = value

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()
        self.socket_path.unlink(missing_ok=True)


@contextlib.contextmanager
def pebble_container(
    mounts: Mapping[str, Path],
    *,
    ready: str | None = "process up",
    name: str = "pgbouncer",
    juju_version: str = "3.6.2",
) -> Iterator[tuple[ops.Container, PebbleProcessRunner]]:
    """An ``ops.Container`` whose Pebble runs its services as real processes.

    Args:
        mounts: container path → host directory (``{"/var/lib/pgbouncer": workdir}``).
        ready: the log line each started service prints when ready (PgBouncer's); None to not
            wait.
        name: the container's name.
        juju_version: what the container believes Juju is (it gates a few Pebble features).

    Yields:
        the container, and the runner that holds its processes (logs, PIDs).
    """
    with (
        tempfile.TemporaryDirectory(prefix="pgbk8s-pebble-") as sockets,
        PebbleProcessRunner(mounts) as runner,
    ):
        runner.ready = ready
        path = Path(sockets) / "pebble.socket"
        served = PebbleSocket(path, runner.pebble)
        try:
            client = pebble.Client(socket_path=str(path))
            backend = SimpleNamespace(
                _juju_context=SimpleNamespace(version=JujuVersion(juju_version))
            )
            yield ops.Container(name, cast(Any, backend), client), runner
        finally:
            runner.stop_all()
            served.close()
