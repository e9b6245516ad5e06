"""The PgBouncer workload under Pebble: observe the container, carry a plan out.

This module is the only one that talks to Pebble about PgBouncer's processes and files.
:meth:`Workload.observe` reads the container once into a
:class:`~pgbouncer.plan.ContainerSnapshot` (services, plan, every file under the base directory);
:func:`pgbouncer.plan.plan_apply` decides, purely, what a change takes; :meth:`Workload.execute`
carries the steps out in order and returns what was done. Slot naming is
:mod:`pgbouncer.slots`; the rules (reload, PAUSE, restart, hand-over, draining) are
:mod:`pgbouncer.plan`'s. It knows nothing of relations or config options: the charm renders the
files with :mod:`pgbouncer.config` and hands them over.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import PurePosixPath

import ops
from ops import pebble

from pgbouncer.config import (
    client_tls_ca_path,
    client_tls_cert_path,
    client_tls_key_path,
)
from pgbouncer.plan import (
    FILE_MODE,
    LAYER_LABEL,
    PAUSE_SETTLE_S,
    RESUME_AFTER_S,
    RUN_DIR_MODE,
    WORKLOAD_USER,
    ApplyResult,
    ContainerSnapshot,
    DrainPolicy,
    ServiceInfo,
    Step,
    WorkloadPlan,
    plan_apply,
)
from pgbouncer.slots import DEFAULT_BASE_DIR

logger = logging.getLogger(__name__)

DEFAULT_CPUS = 1
"""CPUs assumed when the container's cgroup tells nothing (no quota, no cpuset readable)."""

_CGROUP_FILES = {
    "cpu.max": "/sys/fs/cgroup/cpu.max",
    "cpuset.cpus.effective": "/sys/fs/cgroup/cpuset.cpus.effective",
    "cpu.cfs_quota_us": "/sys/fs/cgroup/cpu/cpu.cfs_quota_us",
    "cpu.cfs_period_us": "/sys/fs/cgroup/cpu/cpu.cfs_period_us",
    "cpuset.effective_cpus": "/sys/fs/cgroup/cpuset/cpuset.effective_cpus",
}
_VERSION = re.compile(r"^PgBouncer (\d+\.\d+(?:\.\d+)?)\b", re.MULTILINE)


def version_from_output(output: str) -> str | None:
    """The version in ``pgbouncer --version`` output (``PgBouncer 1.24.1``), else None."""
    match = _VERSION.search(output)
    return match.group(1) if match else None


class _CgroupFiles(Mapping[str, "str | None"]):
    """The cgroup files of :data:`_CGROUP_FILES`, each read (once) when first asked for."""

    def __init__(self, read: Callable[[str], str | None]):
        self._read = read
        self._cache: dict[str, str | None] = {}

    def __getitem__(self, name: str) -> str | None:
        if name not in self._cache:
            self._cache[name] = self._read(_CGROUP_FILES[name])
        return self._cache[name]

    def __iter__(self) -> Iterator[str]:
        return iter(_CGROUP_FILES)

    def __len__(self) -> int:
        return len(_CGROUP_FILES)


def cpu_count_from_cgroup(files: Mapping[str, str | None]) -> int | None:
    """CPUs the container may use, from the text of its cgroup files.

    Args:
        files: content by file name, None when unreadable: ``cpu.max`` (v2: ``"<quota>
            <period>"`` or ``"max <period>"``), ``cpu.cfs_quota_us`` and ``cpu.cfs_period_us``
            (v1, quota -1 = none), ``cpuset.cpus.effective`` (v2) or ``cpuset.effective_cpus``
            (v1), a list like ``0-3,8``.

    Returns:
        ``ceil(quota / period)`` when a quota is set; else the number of CPUs in the cpuset;
        None when nothing usable was given.
    """
    quota = _parse_quota(files)
    if quota is not None:
        return quota
    for name in ("cpuset.cpus.effective", "cpuset.effective_cpus"):
        count = _count_cpuset(files.get(name))
        if count:
            return count
    return None


def _parse_quota(files: Mapping[str, str | None]) -> int | None:
    v2 = files.get("cpu.max")
    if v2 and v2.strip():
        parts = v2.split()
        return _ceil_ratio(parts[0], parts[1]) if len(parts) == 2 else None
    quota, period = files.get("cpu.cfs_quota_us"), files.get("cpu.cfs_period_us")
    if quota and period:
        return _ceil_ratio(quota.strip(), period.strip())
    return None


def _ceil_ratio(quota: str, period: str) -> int | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:  # "max" (v2) means no quota
        return None
    if q <= 0 or p <= 0:  # -1 (v1) means no quota
        return None
    return -(-q // p)


def _count_cpuset(text: str | None) -> int | None:
    if not text or not text.strip():
        return None
    count = 0
    try:
        for part in text.strip().split(","):
            low, _, high = part.partition("-")
            count += (int(high) - int(low) + 1) if high else 1
    except ValueError:
        return None
    return count if count > 0 else None


class WorkloadError(Exception):
    """Pebble refused or failed an operation on the workload container."""


class WorkloadUnreachable(WorkloadError):  # noqa: N818 (reads as a state, like BackendUnreachable)
    """Pebble in the workload container cannot be reached (not started yet, or gone)."""


@contextlib.contextmanager
def _pebble_errors(what: str) -> Iterator[None]:
    """Turn Pebble's exceptions into this module's, saying what was being done."""
    try:
        yield
    except pebble.ConnectionError as exc:
        raise WorkloadUnreachable(f"{what}: cannot reach Pebble ({exc})") from exc
    except (pebble.APIError, pebble.ChangeError, pebble.PathError, pebble.ExecError) as exc:
        raise WorkloadError(f"{what}: {exc}") from exc


def _value(item: object) -> str:
    """An enum's value (``ServiceStatus.ACTIVE`` → ``active``); a plain string as it is."""
    return str(getattr(item, "value", item))


def _listing_row(entry: pebble.FileInfo) -> tuple[str, ...]:
    """One directory entry as the settled record compares it (``settled.Glance``)."""
    modified = entry.last_modified.isoformat() if entry.last_modified else ""
    return (
        entry.name, _value(entry.type), str(entry.size), f"{entry.permissions:03o}", modified,
        str(entry.user_id), str(entry.group_id),
    )  # fmt: skip


def _not_found(exc: WorkloadError) -> bool:
    cause = exc.__cause__
    if isinstance(cause, pebble.APIError) and cause.code == 404:
        return True
    return isinstance(cause, pebble.PathError) and cause.kind == "not-found"


class Workload:
    """PgBouncer in its container, seen through Pebble.

    Args:
        container: the ``pgbouncer`` container.
        base_dir: where PgBouncer's files live in it.
        sleep: how to wait between PAUSE, RELOAD and RESUME (tests pass a recorder).
    """

    def __init__(
        self,
        container: ops.Container,
        base_dir: str = DEFAULT_BASE_DIR,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self._container = container
        self._base_dir = base_dir
        self._sleep = sleep

    def can_connect(self) -> bool:
        """Whether Pebble in the container answers."""
        return self._container.can_connect()

    def cpu_limit(self) -> int:
        """CPUs the workload container may use, from its cgroup (read through Pebble).

        The CPU quota when there is one (cgroup v2 ``cpu.max``, else v1 ``cpu.cfs_quota_us`` /
        ``cpu.cfs_period_us``), rounded up; without a quota, the CPUs of the container's cpuset;
        :data:`DEFAULT_CPUS` when neither can be read.

        Raises:
            WorkloadUnreachable: Pebble cannot be reached (guessing would change the process
                count, and so restart PgBouncer, on a passing fault).
        """
        # Read on demand, in the order cpu_count_from_cgroup asks: on cgroup v2 with a quota,
        # one file (a hook pays only for what it uses).
        files = _CgroupFiles(lambda path: self._read(path, "read the cgroup"))
        return cpu_count_from_cgroup(files) or DEFAULT_CPUS

    # -- observe -------------------------------------------------------------------------------
    def observe(self, with_files: bool = True) -> ContainerSnapshot:
        """The container as it is: services, plan and every file under the base directory.

        One listing of services, one of the plan, one of the directory and one read per
        regular file in it (all small: inis, the auth file, TLS and exporter files).

        Raises:
            WorkloadUnreachable: Pebble cannot be reached.
            WorkloadError: Pebble refused a read.
        """
        services = self._services()
        with _pebble_errors("read the plan"):
            plan = self._container.get_plan()
        files: dict[str, str] = {}
        entries = self._entries() if with_files else []
        for path in sorted(self._files_in(entries)):
            content = self._read(path, "read the current files")
            if content is not None:
                files[path] = content
        return ContainerSnapshot(
            services=services,
            plan_services={name: s.to_dict() for name, s in plan.services.items()},
            plan_checks={name: c.to_dict() for name, c in plan.checks.items()},
            files=files,
            base_dir=self._base_dir,
            listing=tuple(_listing_row(e) for e in entries) if with_files else None,
        )

    def glance(self) -> tuple[list[tuple[str, ...]], dict[str, ServiceInfo]]:
        """The container at a glance, in two Pebble calls.

        The base directory's entries (name, type, size, permissions, modification time, owner)
        and every service's state: what the settled record compares (:mod:`settled`); nothing
        is read from any file.

        Raises:
            WorkloadUnreachable: Pebble cannot be reached.
            WorkloadError: Pebble refused a listing.
        """
        services = self._services()
        return [_listing_row(e) for e in self._entries()], services

    def _services(self) -> dict[str, ServiceInfo]:
        """Every Pebble service as listed (one Pebble call)."""
        with _pebble_errors("list the services"):
            return {
                name: ServiceInfo(current=_value(info.current), startup=_value(info.startup))
                for name, info in self._container.get_services().items()
            }

    def served_client_tls(self, snapshot: ContainerSnapshot) -> tuple[str, str, str] | None:
        """The certificate, key and CA PgBouncer serves clients with now; None without TLS.

        The last good certificate: when what the provider sends now cannot be used, the charm
        keeps serving these rather than turning TLS off.
        """
        texts = [
            snapshot.files.get(path(self._base_dir))
            for path in (client_tls_cert_path, client_tls_key_path, client_tls_ca_path)
        ]
        cert, key, ca = texts
        if cert is None or key is None or ca is None:
            return None
        return cert, key, ca

    def is_running(self) -> bool:
        """Whether every enabled PgBouncer service in the plan is active (False if none)."""
        try:
            return self.observe(with_files=False).pgbouncer_running()
        except WorkloadError:
            return False

    # -- execute -------------------------------------------------------------------------------
    def apply(
        self,
        files: Mapping[str, str | None],
        processes: int,
        drain_old: bool = True,
        wait_for_clients: bool = True,
        drain_same_port: bool = True,
    ) -> ApplyResult:
        """Observe, plan (:func:`pgbouncer.plan.plan_apply`) and execute, in one call.

        Raises:
            ValueError: bad ``processes``, a path outside the base directory, or an ini missing.
            WorkloadUnreachable: Pebble cannot be reached.
            WorkloadError: Pebble refused an operation (the files written so far stay).
        """
        policy = DrainPolicy(
            drain_old=drain_old, drain_same_port=drain_same_port, wait_for_clients=wait_for_clients
        )
        return self.execute(plan_apply(self.observe(), files, processes, policy))

    def execute(self, plan: WorkloadPlan) -> ApplyResult:
        """Carry ``plan``'s steps out in order; its result once every step succeeded.

        Raises:
            WorkloadUnreachable: Pebble cannot be reached.
            WorkloadError: Pebble refused a step (the steps before it stay done).
        """
        for step in plan.steps:
            self._do(step)
        return plan.result

    def put_fact(self, path: str, content: str | None) -> None:
        """Write (or, with None, remove) one of the charm's own small files in the container.

        The image check's findings and the drain clocks: facts of this container that the next
        hook reads in its snapshot. No process reads them, so nothing is reloaded.

        Raises:
            WorkloadError: Pebble refused (or cannot be reached).
        """
        if content is None:
            self._do(("remove", path))
            return
        # Owned by Pebble's user (root), not the workload user: an image without one (which
        # the image check reports) must still keep what the check found.
        with _pebble_errors(f"write {path}"):
            self._container.push(path, content, make_dirs=True, permissions=FILE_MODE)

    def _do(self, step: Step) -> None:
        kind, *args = step
        container = self._container
        if kind == "write":
            path, content = args
            with _pebble_errors(f"write {path}"):
                container.push(
                    path,
                    content,
                    make_dirs=True,
                    permissions=FILE_MODE,
                    user=WORKLOAD_USER,
                    group=WORKLOAD_USER,
                )
        elif kind == "remove":
            with _pebble_errors(f"remove {args[0]}"):
                container.remove_path(args[0])
        elif kind == "make_dir":
            path = args[0]
            with _pebble_errors(f"create {path}"):
                if not container.exists(path):
                    container.make_dir(
                        path,
                        make_parents=True,
                        permissions=RUN_DIR_MODE,
                        user=WORKLOAD_USER,
                        group=WORKLOAD_USER,
                    )
        elif kind == "stop":
            with _pebble_errors("stop " + ", ".join(args[0])):
                container.stop(*args[0])
        elif kind == "add_layer":
            with _pebble_errors("add the layer"):
                container.add_layer(LAYER_LABEL, args[0], combine=True)
        elif kind == "start":
            with _pebble_errors("start " + ", ".join(args[0])):
                container.start(*args[0])
        elif kind == "restart":
            with _pebble_errors(f"restart {args[0]}"):
                container.restart(args[0])
        elif kind == "signal":
            signal, names = args
            with _pebble_errors(f"send {signal} to " + ", ".join(names)):
                container.send_signal(signal, *names)
        elif kind == "reload":
            self._reload(list(args[0]), list(args[1]))
        else:  # pragma: no cover (plan_apply makes only the kinds above)
            raise ValueError(f"unknown step {kind}")

    def _reload(self, reloaded: list[str], paused: list[str]) -> None:
        """SIGHUP ``reloaded``; those in ``paused`` are held in PAUSE around it.

        PAUSE (SIGUSR1), :data:`~pgbouncer.plan.PAUSE_SETTLE_S`, RELOAD (SIGHUP),
        :data:`~pgbouncer.plan.RESUME_AFTER_S`, RESUME (SIGUSR2). RESUME is sent even when the
        reload fails, so that a Pebble error can never leave clients waiting on a paused
        process; the longest a client waits is the sum of the two delays (plus PgBouncer's
        ``server_login_retry`` when PAUSE cut a login in flight).
        """
        if not paused:
            with _pebble_errors("reload"):
                self._container.send_signal("SIGHUP", *reloaded)
            return
        with _pebble_errors("pause"):
            self._container.send_signal("SIGUSR1", *paused)
        try:
            self._sleep(PAUSE_SETTLE_S)
            with _pebble_errors("reload"):
                self._container.send_signal("SIGHUP", *reloaded)
            self._sleep(RESUME_AFTER_S)
        finally:
            with _pebble_errors("resume"):
                self._container.send_signal("SIGUSR2", *paused)

    # -- helpers ----------------------------------------------------------------------------
    def _entries(self) -> list[pebble.FileInfo]:
        """The entries directly in the base directory (one Pebble call; none if it is absent)."""
        try:
            with _pebble_errors("list the files"):
                return self._container.list_files(self._base_dir)
        except WorkloadError as exc:
            if _not_found(exc):
                return []
            raise

    def _files_in(self, entries: list[pebble.FileInfo]) -> set[str]:
        """The regular files among ``entries``, as paths."""
        return {
            str(PurePosixPath(self._base_dir) / entry.name)
            for entry in entries
            if entry.type == pebble.FileType.FILE
        }

    def _read(self, path: str, what: str) -> str | None:
        try:
            with _pebble_errors(what), self._container.pull(path) as stream:
                return stream.read()
        except WorkloadError as exc:
            if _not_found(exc):
                return None
            raise
