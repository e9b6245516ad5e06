"""A stand-in for Pebble's HTTP API on a unix socket: what the charm's hooks call, no more.

Juju's charm container reaches the workload container's Pebble at
``/charm/containers/<name>/pebble.socket`` over HTTP. This server answers the calls our charm
(and ops itself) make in a hook, from a container state taken from ``ops.testing``: the plan's
layers, the services' status, and files under the container's mounts (a path outside every mount
is "not found", as the cgroup files are in the prepared states). Writes go to the mount
directories; layers, replans, starts, stops and signals change only the in-memory state, which
:meth:`PebbleState.reset` puts back before every measured hook. ``exec`` is refused (HTTP 400):
the one caller, ``pgbouncer --version`` in ``pebble-ready``, logs a warning and goes on.

Every request is counted by path, so that a report can say how many Pebble calls a hook made.
"""

from __future__ import annotations

import copy
import json
import os
import socketserver
import threading
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, cast

import yaml


@dataclass
class PebbleState:
    """The container as the stand-in serves it.

    Attributes:
        mounts: container path → host directory holding its files.
        layers: label → layer dict, in order.
        services: service name → ``active``/``inactive``.
        calls: (method, path) → count since the last reset.
    """

    mounts: dict[str, Path]
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    services: dict[str, str] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)
    _initial: tuple[dict[str, Any], dict[str, str]] = field(default_factory=lambda: ({}, {}))

    def snapshot(self) -> None:
        """Remember the current layers and services as what :meth:`reset` restores."""
        self._initial = (copy.deepcopy(self.layers), dict(self.services))

    def reset(self) -> None:
        """Back to the snapshot; call counts to zero."""
        self.layers = copy.deepcopy(self._initial[0])
        self.services = dict(self._initial[1])
        self.calls.clear()

    def host_path(self, path: str) -> Path | None:
        """The host file behind a container path, None outside every mount."""
        for location, source in self.mounts.items():
            if path == location or path.startswith(location.rstrip("/") + "/"):
                rel = os.path.relpath(path, location)
                resolved = (source / rel).resolve()
                if resolved != source.resolve() and source.resolve() not in resolved.parents:
                    return None
                return resolved
        return None

    def plan(self) -> dict[str, Any]:
        """The layers combined (later layers override whole service entries)."""
        services: dict[str, Any] = {}
        for layer in self.layers.values():
            for name, svc in (layer.get("services") or {}).items():
                if svc.get("override") == "merge" and name in services:
                    services[name] = {**services[name], **svc}
                else:
                    services[name] = dict(svc)
        return {"services": services} if services else {}


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

    def do_GET(self) -> None:
        """Read-only calls."""
        url = urllib.parse.urlsplit(self.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        state = self._server.state
        state.calls[f"GET {url.path}"] += 1
        if url.path == "/v1/system-info":
            self._send(_sync({"version": "1.19.0-standin"}))
        elif url.path == "/v1/plan":
            self._send(_sync(yaml.safe_dump(state.plan())))
        elif url.path == "/v1/services":
            names = [n for n in query.get("names", "").split(",") if n]
            plan = state.plan().get("services", {})
            out = [
                {
                    "name": name,
                    "startup": svc.get("startup", "disabled"),
                    "current": state.services.get(name, "inactive"),
                }
                for name, svc in sorted(plan.items())
                if not names or name in names
            ]
            self._send(_sync(out))
        elif url.path.startswith("/v1/changes/"):
            change_id = url.path.split("/")[3]
            self._send(_sync(_change(change_id, "change")))
        elif url.path == "/v1/files" and query.get("action") == "read":
            self._read_file(query.get("path", ""))
        elif url.path == "/v1/files" and query.get("action") == "list":
            self._list(query.get("path", ""), query.get("itself") == "true")
        else:
            self._send(_error(f"not in the stand-in: GET {url.path}", 404))

    def _read_file(self, path: str) -> None:
        host = self._server.state.host_path(path)
        boundary = "standin-boundary"
        if host is None or not host.is_file():
            meta = {
                "type": "sync",
                "status-code": 200,
                "status": "OK",
                "result": [
                    {"path": path, "error": {"kind": "not-found", "message": "no such file"}}
                ],
            }
            content = b""
            parts = []
        else:
            meta = _sync([{"path": path}])
            content = host.read_bytes()
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

    def _list(self, path: str, itself: bool) -> None:
        host = self._server.state.host_path(path)
        if host is None or not host.exists():
            self._send(_error(f"stat {path}: no such file or directory", 404, "not-found"))
            return
        entries = [host] if itself or host.is_file() else sorted(host.iterdir())
        out = []
        for entry in entries:
            st = entry.stat()
            out.append(
                {
                    "path": path if entry == host else f"{path.rstrip('/')}/{entry.name}",
                    "name": entry.name,
                    "type": "directory" if entry.is_dir() else "file",
                    "size": st.st_size,
                    "permissions": f"{st.st_mode & 0o777:03o}",
                    "last-modified": _NOW,
                    "user-id": st.st_uid,
                    "group-id": st.st_gid,
                }
            )
        self._send(_sync(out))

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
            label = body["label"]
            if label in state.layers and body.get("combine"):
                merged = state.layers[label]
                for name, svc in (layer.get("services") or {}).items():
                    merged.setdefault("services", {})[name] = svc
            else:
                state.layers[label] = layer
            self._send(_sync(True))
        elif url.path == "/v1/services":
            action, names = body.get("action"), body.get("services") or []
            plan = state.plan().get("services", {})
            if action == "replan":
                names = [n for n, s in plan.items() if s.get("startup") == "enabled"]
            for name in names:
                state.services[name] = "inactive" if action == "stop" else "active"
            self._server.next_change += 1
            self._send(
                {
                    "type": "async",
                    "status-code": 202,
                    "status": "Accepted",
                    "change": str(self._server.next_change),
                    "result": None,
                }
            )
        elif url.path == "/v1/signals":
            self._send(_sync(True))
        else:
            self._send(_error(f"not in the stand-in: POST {url.path}", 400))

    def _file_action(self, body: dict[str, Any]) -> None:
        results = []
        for item in body.get("dirs") or body.get("paths") or []:
            host = self._server.state.host_path(item["path"])
            if host is None:
                results.append({"path": item["path"], "error": {"kind": "permission-denied"}})
                continue
            if body.get("action") == "make-dirs":
                host.mkdir(parents=bool(item.get("make-parents")), exist_ok=True)
            elif body.get("action") == "remove" and host.exists():
                host.unlink()
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
            host = self._server.state.host_path(item["path"])
            if host is None:
                results.append(
                    {"path": item["path"], "error": {"kind": "permission-denied", "message": ""}}
                )
                continue
            if item.get("make-dirs"):
                host.parent.mkdir(parents=True, exist_ok=True)
            host.write_bytes(contents.get(item["path"], b""))
            if item.get("permissions"):
                host.chmod(int(item["permissions"], 8))
            results.append({"path": item["path"]})
        self._send(_sync(results))


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, state: PebbleState):
        self.state = state
        self.next_change = 0
        super().__init__(path, _Handler)

    def get_request(self):  # type: ignore[override]
        """Unix sockets have no client address; the HTTP handler wants a tuple."""
        request, _ = super().get_request()
        return request, ("pebble-client", 0)


class PebbleStandIn:
    """The stand-in served from a thread; :meth:`close` stops it and removes the socket."""

    def __init__(self, socket_path: Path, state: PebbleState):
        socket_path.parent.mkdir(parents=True, exist_ok=True)
        if socket_path.exists():
            socket_path.unlink()
        self.socket_path = socket_path
        self.state = state
        self._server = _Server(str(socket_path), state)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()
        self.socket_path.unlink(missing_ok=True)
