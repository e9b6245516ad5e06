"""One stand-in for Pebble's behaviour, used by the e2e harness and by the bench.

What a workload container's Pebble does with what a charm asks of it, and nothing of how it is
asked: the HTTP API is :mod:`harness.pebble_socket`, an adapter on top of this, and the e2e harness
replays on it the calls recorded from Scenario's mock client (:mod:`harness.processes`).

- **Layers**: added in order by label; adding a label again without ``combine`` is an error;
  with it, or for a new label, each service merges into the plan as its ``override`` says
  (``merge``: its fields over the earlier ones, ``environment`` key by key; ``replace``: whole).
- **Services**: ``start`` (of a service not running), ``stop`` (SIGTERM, ``kill-delay``, SIGKILL),
  ``restart`` (stop, then start from the current plan), ``replan`` (stop every service it has
  run whose definition changed since, running or not, enabled or not; then start those and every
  ``startup: enabled`` one not running: Pebble's ``servstate.Replan``), ``autostart``.
- **Exits**: :meth:`PebbleStandIn.reap` applies ``on-success`` (exit 0) or ``on-failure``
  (otherwise) **from the definition the process was started with**, not the current plan:
  ``ignore`` leaves the service inactive; ``restart`` (both default) runs it again from that same
  definition, and a process that fails at once puts it in back-off (``error``: ops knows no
  back-off status). Every non-zero exit is kept in :attr:`PebbleStandIn.crashes`, so that a test
  can never lose a crash to a restart.
- **Signals** go to active services only; any other is an error, as Pebble answers.
- **exec** runs through the process backend (as the service's user, in its mounts), or is refused
  without one.
- **Files** under the container's mounts (a path outside every mount is ``not-found``), written
  with the permissions asked and owned as Pebble owns them: the user and group asked, else root.

Processes are the business of a :class:`Processes` backend: the e2e harness's real processes
(:class:`harness.processes.PebbleProcessRunner`); without one (the bench), a started service is
simply active.
"""

from __future__ import annotations

import copy
import datetime
import grp
import os
import pwd
import shlex
import signal as signals
import stat
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

from ops import pebble

DEFAULT_KILL_DELAY = 5.0
ACTIVE, INACTIVE, ERROR = "active", "inactive", "error"


class PebbleError(RuntimeError):
    """What Pebble would answer with an error (the HTTP adapter turns it into one).

    Attributes:
        kind: Pebble's error kind (``not-found``, ``permission-denied``…), empty for a plain 400.
    """

    def __init__(self, message: str, kind: str = ""):
        super().__init__(message)
        self.kind = kind


# --------------------------------------------------------------------------------------------
# Service definitions and layers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceSpec:
    """What the stand-in needs of a Pebble service definition."""

    command: str
    user: str | None = None
    group: str | None = None
    environment: tuple[tuple[str, str], ...] = ()
    working_dir: str | None = None
    startup: str = "enabled"
    kill_delay: float = DEFAULT_KILL_DELAY
    on_success: str = "restart"
    """What Pebble does when the process exits 0 (``restart``, its default, or ``ignore``...),
    as the process was *started*: Pebble applies the definition a process started with."""
    on_failure: str = "restart"
    """The same for a non-zero exit."""

    @classmethod
    def from_service(
        cls, service: ServiceSpec | pebble.Service | Mapping[str, Any]
    ) -> ServiceSpec:
        """Build from an ``ops.pebble.Service`` (a plan's) or a layer-style dict."""
        if isinstance(service, ServiceSpec):
            return service
        data: Mapping[str, Any] = (
            cast(Mapping[str, Any], service.to_dict())
            if isinstance(service, pebble.Service)
            else dict(service)
        )
        user = data.get("user")
        if user is None and data.get("user-id") is not None:
            user = pwd.getpwuid(int(data["user-id"])).pw_name
        group = data.get("group")
        if group is None and data.get("group-id") is not None:
            group = grp.getgrgid(int(data["group-id"])).gr_name
        return cls(
            command=data["command"],
            user=user,
            group=group,
            environment=tuple(sorted((data.get("environment") or {}).items())),
            working_dir=data.get("working-dir"),
            startup=str(data.get("startup") or "disabled"),
            kill_delay=_duration(data.get("kill-delay")),
            on_success=str(data.get("on-success") or "restart"),
            on_failure=str(data.get("on-failure") or "restart"),
        )

    def to_dict(self) -> dict[str, Any]:
        """The definition as a layer's service entry (``from_service`` reads it back)."""
        out: dict[str, Any] = {
            "override": "replace",
            "command": self.command,
            "startup": self.startup,
            "kill-delay": f"{self.kill_delay}s",
            "on-success": self.on_success,
            "on-failure": self.on_failure,
        }
        if self.user:
            out["user"] = self.user
        if self.group:
            out["group"] = self.group
        if self.environment:
            out["environment"] = dict(self.environment)
        if self.working_dir:
            out["working-dir"] = self.working_dir
        return out

    def argv(self) -> list[str]:
        """The command as Pebble runs it (shell words; ``[ default args ]`` kept, brackets not)."""
        return [word for word in shlex.split(self.command) if word not in ("[", "]")]


def _duration(value: str | None) -> float:
    if not value:
        return DEFAULT_KILL_DELAY
    units = {"ms": 0.001, "s": 1.0, "m": 60.0}
    for suffix in ("ms", "s", "m"):
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * units[suffix]
    return float(value)


def _merge_service(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """One service entry of a layer laid over the plan's, as its ``override`` says."""
    if old is None or new.get("override") != "merge":
        return copy.deepcopy(dict(new))
    merged = {**copy.deepcopy(dict(old)), **copy.deepcopy(dict(new))}
    if "environment" in old or "environment" in new:
        merged["environment"] = {
            **(old.get("environment") or {}),
            **(new.get("environment") or {}),
        }
    return merged


def combine_layers(layers: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The plan's services: the layers laid one over the other, in order."""
    services: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for name, svc in (layer.get("services") or {}).items():
            services[name] = _merge_service(services.get(name), svc)
    return services


def _layer_dict(layer: pebble.Layer | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(layer, pebble.Layer):
        return cast(dict[str, Any], layer.to_dict())
    return copy.deepcopy(dict(layer))


# --------------------------------------------------------------------------------------------
# What Pebble did
# --------------------------------------------------------------------------------------------


@dataclass
class SyncReport:
    """What a call (or a replay of several) did, by service name."""

    started: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)
    signalled: list[tuple[str, str]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.started or self.stopped or self.restarted or self.signalled)


class Processes(Protocol):
    """Where services run: the e2e harness's real processes."""

    def launch(self, name: str, spec: ServiceSpec) -> None:
        """Start ``name``'s process from ``spec`` (and wait until it is ready)."""

    def terminate(self, name: str) -> None:
        """Stop its process: SIGTERM, ``kill-delay``, SIGKILL; reaped. No-op if none."""

    def send(self, name: str, sig: signals.Signals) -> None:
        """Send a signal to its process."""

    def exit_code(self, name: str) -> int | None:
        """Its exit code once its process ended by itself, None while it runs."""

    def forget(self, name: str) -> None:
        """Drop a process that ended by itself (reaped, no signal sent)."""

    def settled(self, name: str) -> bool:
        """Whether a process just started from a restart policy survived its first moments."""
        ...

    def run(self, argv: list[str], spec: ServiceSpec) -> tuple[int, bytes, bytes]:
        """Run a command (``exec``) as ``spec`` says: user, group, environment, directory."""
        ...


# --------------------------------------------------------------------------------------------
# The stand-in
# --------------------------------------------------------------------------------------------


class PebbleStandIn:
    """One container's Pebble: its layers, its services' statuses, its files.

    Args:
        mounts: container path → host directory holding its files.
        processes: where services run; None to only keep their statuses (the bench).
        layers: label → layer, in order, to start from.
        statuses: service name → ``active``/``inactive`` to start from.
    """

    def __init__(
        self,
        mounts: Mapping[str, Path],
        processes: Processes | None = None,
        layers: Mapping[str, pebble.Layer | Mapping[str, Any]] | None = None,
        statuses: Mapping[str, str] | None = None,
    ):
        self.mounts = {str(k): Path(v) for k, v in mounts.items()}
        self.processes = processes
        self.layers: dict[str, dict[str, Any]] = {
            label: _layer_dict(layer) for label, layer in (layers or {}).items()
        }
        self.statuses: dict[str, str] = dict(statuses or {})
        self.started: dict[str, ServiceSpec] = {
            name: spec for name, spec in self.services().items() if self.is_active(name)
        }
        """Every service run, with the definition it was last started from: Pebble keeps the
        same record (until pruned), applies its exit policies from it and replans against it."""
        self.crashes: list[tuple[str, int]] = []
        """Every non-zero exit :meth:`reap` saw, in order."""
        self.calls: Counter[str] = Counter()
        """API calls by kind, counted by the adapter that serves them."""
        self._initial: tuple[dict[str, Any], dict[str, str], dict[str, ServiceSpec]] = (
            copy.deepcopy(self.layers),
            dict(self.statuses),
            dict(self.started),
        )

    # -- the bench's rewind ----------------------------------------------------------------

    def snapshot(self) -> None:
        """Remember the layers and statuses as what :meth:`reset` restores."""
        self._initial = (copy.deepcopy(self.layers), dict(self.statuses), dict(self.started))

    def reset(self) -> None:
        """Back to the snapshot; call counts to zero."""
        self.layers = copy.deepcopy(self._initial[0])
        self.statuses = dict(self._initial[1])
        self.started = dict(self._initial[2])
        self.calls.clear()

    # -- the plan --------------------------------------------------------------------------

    def add_layer(
        self, label: str, layer: pebble.Layer | Mapping[str, Any], combine: bool = False
    ) -> None:
        """Add a layer, or with ``combine`` lay it over the one of the same label."""
        new = _layer_dict(layer)
        if label in self.layers and not combine:
            raise PebbleError(f'layer "{label}" already exists')
        if label not in self.layers:
            self.layers[label] = new
            return
        existing = self.layers[label].setdefault("services", {})
        for name, svc in (new.get("services") or {}).items():
            existing[name] = _merge_service(existing.get(name), svc)
        # Checks are laid over by name too (the charm's all say ``override: replace``).
        self.layers[label].setdefault("checks", {}).update(copy.deepcopy(new.get("checks") or {}))

    def plan(self) -> dict[str, dict[str, Any]]:
        """The plan's services, layer-style dicts."""
        return combine_layers(self.layers.values())

    def checks(self) -> dict[str, dict[str, Any]]:
        """The plan's checks: each layer's over the ones before it, by name."""
        combined: dict[str, dict[str, Any]] = {}
        for layer in self.layers.values():
            combined.update(copy.deepcopy(layer.get("checks") or {}))
        return combined

    def services(self) -> dict[str, ServiceSpec]:
        """The plan's services as definitions."""
        return {name: ServiceSpec.from_service(svc) for name, svc in self.plan().items()}

    def is_active(self, name: str) -> bool:
        """Whether the service is active (its process alive, with a backend)."""
        return self.statuses.get(name) == ACTIVE

    def active(self) -> set[str]:
        """The active services."""
        return {name for name, status in self.statuses.items() if status == ACTIVE}

    # -- services ----------------------------------------------------------------------------

    def _launch(self, name: str, spec: ServiceSpec) -> None:
        if self.processes is not None:
            self.processes.launch(name, spec)
        self.started[name] = spec
        self.statuses[name] = ACTIVE

    def _terminate(self, name: str) -> None:
        if self.processes is not None:
            self.processes.terminate(name)
        self.statuses[name] = INACTIVE

    def _spec(self, name: str, specs: Mapping[str, ServiceSpec]) -> ServiceSpec:
        if name not in specs:
            raise PebbleError(f'service "{name}" does not exist', "not-found")
        return specs[name]

    def start(self, names: Iterable[str]) -> SyncReport:
        """Start services that are not active, from the current plan."""
        specs, report = self.services(), SyncReport()
        for name in names:
            spec = self._spec(name, specs)
            if not self.is_active(name):
                self._launch(name, spec)
                report.started.append(name)
        return report

    def stop(self, names: Iterable[str]) -> SyncReport:
        """Stop services (an inactive one is left as it is)."""
        report = SyncReport()
        for name in names:
            if self.statuses.get(name) in (ACTIVE, ERROR):
                if self.is_active(name):
                    report.stopped.append(name)
                self._terminate(name)
        return report

    def restart(self, names: Iterable[str]) -> SyncReport:
        """Stop (if active), then start from the current plan, one service at a time."""
        specs, report = self.services(), SyncReport()
        for name in names:
            spec = self._spec(name, specs)
            self._terminate(name)
            self._launch(name, spec)
            report.restarted.append(name)
        return report

    def autostart(self) -> SyncReport:
        """Start every ``startup: enabled`` service that is not active."""
        enabled = [name for name, spec in self.services().items() if spec.startup == "enabled"]
        return self.start(name for name in enabled if not self.is_active(name))

    def replan(self) -> SyncReport:
        """Pebble's replan: restart what changed since it ran, start what is enabled."""
        specs, report = self.services(), SyncReport()
        changed = {name for name, ran in self.started.items() if specs.get(name) != ran}
        stopped = set()
        for name in sorted(changed):
            if self.is_active(name):
                self._terminate(name)
                stopped.add(name)
        report.stopped = sorted(stopped - set(specs))
        for name, spec in specs.items():
            if name not in changed and (spec.startup != "enabled" or self.is_active(name)):
                continue
            self._launch(name, spec)
            (report.restarted if name in stopped else report.started).append(name)
        return report

    def signal(self, names: Iterable[str], sig: int | str) -> SyncReport:
        """Send a signal to active services; any other is an error, as Pebble answers."""
        signum = signals.Signals[sig] if isinstance(sig, str) else signals.Signals(sig)
        names, report = list(names), SyncReport()
        for name in names:
            ended = self.processes is not None and self.processes.exit_code(name) is not None
            if not self.is_active(name) or ended:
                raise PebbleError(f'cannot send signal to "{name}": service is not running')
        for name in names:
            if self.processes is not None:
                self.processes.send(name, signum)
            report.signalled.append((name, signum.name))
        return report

    def reap(self) -> dict[str, str]:
        """Apply each ended process's exit policy from the definition it was started with.

        Returns:
            the services whose status changed, with their new status.
        """
        changed: dict[str, str] = {}
        if self.processes is None:
            return changed
        for name in sorted(self.active()):
            code = self.processes.exit_code(name)
            if code is None:
                continue
            started_as = self.started[name]
            self.processes.forget(name)
            if code != 0:
                self.crashes.append((name, code))
            action = started_as.on_success if code == 0 else started_as.on_failure
            if action != "restart":
                self.statuses[name] = changed[name] = INACTIVE
                continue
            self.processes.launch(name, started_as)
            if not self.processes.settled(name):
                self.processes.terminate(name)
                self.statuses[name] = changed[name] = ERROR  # Pebble: back-off
        return changed

    def exec(self, command: list[str], **spec: Any) -> tuple[int, bytes, bytes]:
        """Run a command in the container (``user``, ``group``, ``environment``, ``working-dir``)."""
        if self.processes is None:
            raise PebbleError("exec is not served by this stand-in")
        definition = ServiceSpec.from_service({"command": shlex.join(command), **spec})
        return self.processes.run(command, definition)

    # -- files -------------------------------------------------------------------------------

    def host_path(self, path: str) -> Path | None:
        """The host file behind a container path, None outside every mount."""
        for location, source in self.mounts.items():
            if path == location or path.startswith(location.rstrip("/") + "/"):
                rel = os.path.relpath(path, location)
                root = source.resolve()
                resolved = (source / rel).resolve()
                if resolved != root and root not in resolved.parents:
                    return None
                return resolved
        return None

    def _host(self, path: str) -> Path:
        host = self.host_path(path)
        if host is None:
            raise PebbleError(f"{path}: outside the container's mounts", "permission-denied")
        return host

    @staticmethod
    def owner_ids(
        user: str | None = None,
        group: str | None = None,
        user_id: int | None = None,
        group_id: int | None = None,
    ) -> tuple[int, int]:
        """UID and GID Pebble gives a pushed file or made directory: as asked, else root."""
        uid, gid = user_id, group_id
        if user:
            entry = pwd.getpwnam(user)
            uid = entry.pw_uid
            if gid is None and not group:
                gid = entry.pw_gid
        if group:
            gid = grp.getgrnam(group).gr_gid
        if uid is not None and gid is None:
            gid = pwd.getpwuid(uid).pw_gid
        return (uid or 0, gid or 0)

    @classmethod
    def chown(cls, host: Path, **owner: Any) -> None:
        """Own ``host`` as Pebble would (when we may: only root gives files away)."""
        uid, gid = cls.owner_ids(**owner)
        if os.geteuid() == 0:
            os.chown(host, uid, gid)

    def push(
        self,
        path: str,
        data: bytes,
        *,
        permissions: int = 0o644,
        make_dirs: bool = False,
        **owner: Any,
    ) -> None:
        """Write a file (a new one each time, as Pebble does), with its mode and owner."""
        host = self._host(path)
        if make_dirs:
            host.parent.mkdir(parents=True, exist_ok=True)
        elif not host.parent.is_dir():
            raise PebbleError(f"{path}: no such directory", "not-found")
        host.unlink(missing_ok=True)
        fd = os.open(host, os.O_WRONLY | os.O_CREAT | os.O_EXCL, permissions)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(host, permissions)  # the umask does not apply
        self.chown(host, **owner)

    def pull(self, path: str) -> bytes:
        """A file's content."""
        host = self.host_path(path)
        if host is None or not host.is_file():
            raise PebbleError(f"{path}: no such file", "not-found")
        return host.read_bytes()

    def list_files(self, path: str, itself: bool = False) -> list[dict[str, Any]]:
        """Pebble's file entries for a directory's children (or the path ``itself``)."""
        host = self.host_path(path)
        if host is None or not host.exists():
            raise PebbleError(f"stat {path}: no such file or directory", "not-found")
        entries = [host] if itself or host.is_file() else sorted(host.iterdir())
        out = []
        for entry in entries:
            st = entry.stat()
            out.append(
                {
                    "path": path if entry == host else f"{path.rstrip('/')}/{entry.name}",
                    "name": entry.name,
                    "type": "directory" if stat.S_ISDIR(st.st_mode) else "file",
                    "size": st.st_size,
                    "permissions": f"{st.st_mode & 0o777:03o}",
                    # Pebble formats the time as RFC 3339, to the second (api_files.go).
                    "last-modified": datetime.datetime.fromtimestamp(
                        int(st.st_mtime), datetime.UTC
                    ).isoformat(),
                    "user-id": st.st_uid,
                    "group-id": st.st_gid,
                }
            )
        return out

    def make_dir(
        self, path: str, *, make_parents: bool = False, permissions: int = 0o755, **owner: Any
    ) -> None:
        """Make a directory (an existing one is left alone with ``make_parents``)."""
        host = self._host(path)
        if host.is_dir():
            if not make_parents:
                raise PebbleError(f"{path}: file exists", "generic-file-error")
            return
        host.mkdir(parents=make_parents, mode=permissions)
        os.chmod(host, permissions)
        self.chown(host, **owner)

    def remove(self, path: str, recursive: bool = False) -> None:
        """Remove a file (or a directory tree with ``recursive``)."""
        host = self._host(path)
        if not host.exists():
            if recursive:
                return
            raise PebbleError(f"{path}: no such file or directory", "not-found")
        if host.is_dir():
            if not recursive:
                host.rmdir()
                return
            for child in sorted(host.rglob("*"), reverse=True):
                child.rmdir() if child.is_dir() and not child.is_symlink() else child.unlink()
            host.rmdir()
        else:
            host.unlink()
