"""The PgBouncer workload under Pebble: the layer, the files, reload and restart.

This module owns what happens inside the ``pgbouncer`` container: N processes sharing one port,
the files they read (written only when their content changed), and how a change reaches the
running processes: a reload (SIGHUP) when PgBouncer can apply it in place, clients staying
connected, and otherwise a replacement that starts the new process before the old one stops.

Each process index ``i`` has three *slots*, the services ``pgbouncer_<i>``,
``pgbouncer_<i>_twin`` and ``pgbouncer_<i>_twin2``, each with its own ini file, unix socket
directory and ``peer_id``. One slot serves; a change a reload cannot make without hurting clients
hands the index over to the next free slot: a ``listen_port`` change (the new slot listens on the
new port, the old one keeps its clients on the old port), and a ``pool_mode`` change, a restart or
a changed service definition (the new slot takes new clients on the same port; the old one gets
SIGTERM at once and serves its clients as they started until they leave). Processes no longer
wanted retire the same way. The slots take turns from one hand-over to the next. It knows nothing of relations
or config options: the charm renders the files with :mod:`pgbouncer.config` and hands them over.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import ops
from ops import pebble

from pgbouncer.config import (
    DEFAULT_BASE_DIR,
    MAX_PROCESSES,
    MIN_PROCESSES,
    SLOTS,
    TWIN,
    RenderError,
    client_tls_ca_path,
    client_tls_cert_path,
    client_tls_key_path,
    ini_path,
    needs_restart,
    parse_ini,
    run_dir,
    slot_suffix,
)
from pgbouncer.exporter import (
    EXPORTER_SERVICE,
    exporter_config_path,
    exporter_service,
    passfile_path,
    retarget,
)

logger = logging.getLogger(__name__)

LAYER_LABEL = "pgbouncer"
SERVICE_PREFIX = "pgbouncer_"
CHECK_NAME = "pgbouncer-listening"
WORKLOAD_USER = "postgres"
"""The user PgBouncer runs as (it refuses root) and that owns its files."""

KILL_DELAY = "10s"
"""How long a stopping process may drain. PgBouncer 1.24 closes its listening socket at once
on SIGTERM (new clients go to the other processes) and then waits for its clients with no time
limit; Pebble sends SIGKILL after this delay. In-flight transactions get this long to finish."""

DRAIN_GRACE_S = 60.0
"""After a port change, how long the old processes keep serving their clients on the old port
once the new port has been published to clients: the first hook after this stops them (SIGTERM,
then :data:`KILL_DELAY`). Clients learn the new port only after the leader publishes it, which
it does once every unit listens on it, and only when that hook has ended (Juju publishes relation
data then); stopping the old processes sooner would cut every client still on them. Without
another hook they run until update-status."""

SAME_PORT_DRAIN_S = 3900.0
"""After a same-port hand-over (a ``pool_mode`` change, a restart, fewer processes), how long the
old processes may keep serving the clients they had, as those started: the first hook after this
stops them, cutting whoever is left (they got SIGTERM at the hand-over; Pebble's stop sends a
second one, which PgBouncer takes as an immediate shutdown). Longer than the default connection
lifetime of the common client pools (HikariCP 30 min, pgx and psycopg_pool 1 h,
docs/workload.md), so that an application whose pool recycles its connections moves over
without an error; a client that holds one connection for longer is cut once, at this bound."""

WAIT_FOR_CLIENTS_SINCE = (1, 23)
"""PgBouncer answers SIGTERM by closing its listener and serving its clients until they leave
(``SHUTDOWN WAIT_FOR_CLIENTS``) from 1.23; before, SIGTERM is an immediate shutdown."""

PAUSE_SETTLE_S = 1.0
"""How long the processes stay paused (SIGUSR1) before the reload that changes a pool's target,
mode or cap. PAUSE closes each idle server connection and each server login in flight at once,
and every other one as its transaction ends; clients' new queries wait (no error) meanwhile.
A transaction longer than this keeps its server through the reload: PgBouncer closes that server
when the transaction ends (its connect string is stale), still without an error."""

RESUME_AFTER_S = 0.2
"""Gap between the reload (SIGHUP) and RESUME (SIGUSR2): PgBouncer handles signals in its event
loop, and two arriving together may be handled in either order."""

DRAIN_POOL_KEYS = frozenset(
    {"max_db_connections", "default_pool_size", "max_user_connections", "min_pool_size"}
)
"""``[pgbouncer]`` keys whose lowering should close server connections over the new value: a
reload alone leaves the connections already open (16 against a cap of 10 in the benchmark)."""

DEFAULT_CPUS = 1
"""CPUs assumed when the container's cgroup tells nothing (no quota, no cpuset readable)."""

FILE_MODE = 0o600
RUN_DIR_MODE = 0o700

DRAINING_SUFFIX = ".draining"
"""A slot that gets SIGTERM to drain its clients has its ini moved aside (``<ini>.draining``).
PgBouncer read it at start and reads it again only on a reload, which a draining process never
gets; but Pebble restarts a process that exits 0 from the definition it was *started* with, and
one started by an earlier charm (without ``on-success: ignore``) would come back, from that ini,
and take new clients. With the file gone, such a restart fails at once and the next apply stops
the service. The moved file still tells which port the process drains on."""

_CGROUP_FILES = {
    "cpu.max": "/sys/fs/cgroup/cpu.max",
    "cpuset.cpus.effective": "/sys/fs/cgroup/cpuset.cpus.effective",
    "cpu.cfs_quota_us": "/sys/fs/cgroup/cpu/cpu.cfs_quota_us",
    "cpu.cfs_period_us": "/sys/fs/cgroup/cpu/cpu.cfs_period_us",
    "cpuset.effective_cpus": "/sys/fs/cgroup/cpuset/cpuset.effective_cpus",
}
_VERSION = re.compile(r"^PgBouncer (\d+\.\d+(?:\.\d+)?)\b", re.MULTILINE)


class WorkloadError(Exception):
    """Pebble refused or failed an operation on the workload container."""


class WorkloadUnreachable(WorkloadError):  # noqa: N818 (reads as a state, like BackendUnreachable)
    """Pebble in the workload container cannot be reached (not started yet, or gone)."""


_SERVICE = re.compile(rf"^{SERVICE_PREFIX}(\d+)(?:{TWIN}(\d*))?$")


def service_name(index: int, slot: int = 0) -> str:
    """The Pebble service of slot ``slot`` of process ``index``."""
    return f"{SERVICE_PREFIX}{index}{slot_suffix(slot)}"


def _parse_service(name: str) -> tuple[int, int] | None:
    match = _SERVICE.match(name)
    if match is None:
        return None
    index, number = int(match.group(1)), match.group(2)  # number: None without the suffix
    slot = 0 if number is None else (int(number) if number else 1)
    if slot >= SLOTS or (number and slot < 2) or service_name(index, slot) != name:
        return None
    return index, slot


def service_index(name: str) -> int | None:
    """The process index a PgBouncer service (any slot) runs; None for other services."""
    parsed = _parse_service(name)
    return parsed[0] if parsed else None


def service_slot(name: str) -> int:
    """The slot of PgBouncer service ``name`` (0 for ``pgbouncer_<i>``).

    Raises:
        ValueError: not a PgBouncer service.
    """
    parsed = _parse_service(name)
    if parsed is None:
        raise ValueError(f"{name} is not a PgBouncer service")
    return parsed[1]


def next_slots(name: str) -> list[str]:
    """The other services of ``name``'s index, in the order they take turns after it.

    Slots are used in turn, so the first is the one that served longest ago.
    """
    parsed = _parse_service(name)
    if parsed is None:
        raise ValueError(f"{name} is not a PgBouncer service")
    index, slot = parsed
    return [service_name(index, (slot + k) % SLOTS) for k in range(1, SLOTS)]


def _service(index: int, base_dir: str, name: str | None = None) -> pebble.ServiceDict:
    slot = service_slot(name) if name is not None else 0
    return {
        "override": "replace",
        "summary": f"PgBouncer process {index}" + (f" (slot {slot})" if slot else ""),
        "command": f"pgbouncer {ini_path(index, base_dir, slot)}",
        "user": WORKLOAD_USER,
        "group": WORKLOAD_USER,
        "startup": "enabled",
        "on-failure": "restart",
        # A process handed over exits 0 once its last client has left: it must stay stopped
        # (Pebble's default would start it again, in the old mode, beside its successor).
        "on-success": "ignore",
        "kill-delay": KILL_DELAY,
    }


def build_layer(
    processes: int,
    listen_port: int | None = None,
    base_dir: str = DEFAULT_BASE_DIR,
    exporter: bool = False,
    serving: Mapping[int, str] | None = None,
) -> pebble.LayerDict:
    """The Pebble layer running ``processes`` PgBouncer processes.

    The services differ only by their ini file; everything that tells them apart (socket dir,
    ``peer_id``) is in that file, so a configuration change never changes the layer.

    The check: with ``listen_port``, one TCP check (level ``ready``) on the shared port. It needs
    nothing in the image, unlike an exec check (a minimal image has no ``psql`` or shell). It
    cannot single out one process: with ``so_reuseport`` the kernel picks the process, and each
    process's own unix socket is out of reach of Pebble's checks. A process that dies is already
    seen and restarted by Pebble itself (``on-failure: restart``); what the check adds is
    readiness: Kubernetes stops routing to the pod when no process accepts connections.

    Args:
        processes: how many services, 1 to 4.
        listen_port: the port the check connects to; None for no check.
        base_dir: where the ini files are.
        exporter: whether to run the metrics exporter (:mod:`pgbouncer.exporter`) too.
        serving: the service each process index runs as (any of its slots);
            indices left out run as ``pgbouncer_<i>``.

    Returns:
        The layer, every entry with ``override: replace``: the serving service of each index,
        enabled. (The other service of an index is the caller's to keep, disabled.)

    Raises:
        ValueError: ``processes`` outside 1 to 4.
    """
    if not MIN_PROCESSES <= processes <= MAX_PROCESSES:
        raise ValueError(f"processes must be {MIN_PROCESSES} to {MAX_PROCESSES}")
    layer: pebble.LayerDict = {
        "summary": "PgBouncer",
        "description": f"{processes} PgBouncer processes sharing one port (so_reuseport)",
        "services": {},
    }
    for i in range(processes):
        name = (serving or {}).get(i, service_name(i))
        if service_index(name) != i:
            raise ValueError(f"{name} does not run process {i}")
        layer["services"][name] = _service(i, base_dir, name)
    if exporter:
        layer["services"][EXPORTER_SERVICE] = exporter_service(base_dir)
    if listen_port is not None:
        layer["checks"] = {
            CHECK_NAME: {
                "override": "replace",
                "level": "ready",
                "period": "10s",
                "timeout": "3s",
                "threshold": 3,
                "tcp": {"host": "127.0.0.1", "port": listen_port},
            }
        }
    return layer


def parse_version(output: str) -> str | None:
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


def _int(value: str | None) -> int:
    return int(value) if value and value.isdigit() else 0


def drain_reason(old_ini: str | None, new_ini: str) -> str | None:
    """Why a reload from ``old_ini`` to ``new_ini`` must be wrapped in PAUSE … RESUME.

    - ``target``: a ``[databases]`` entry present in both files points elsewhere (a primary
      switchover). PgBouncer 1.24 kills a server login in flight to the old target, caches that
      as a login failure and drops the clients waiting on that pool; under PAUSE no login is in
      flight and no client waits on a server, so nothing is dropped.
    - ``pool_mode``: the pool mode changes; server connections made under the old mode close.
    - ``cap``: a pool limit (:data:`DRAIN_POOL_KEYS`) is lowered, or set where it was
      unlimited: PAUSE closes the server connections, RESUME reopens them under the new limit.

    A new or removed ``[databases]`` entry, an auth file or ``[peers]`` change needs none.

    Args:
        old_ini: the file the process runs with (None: never started, nothing to drain).
        new_ini: the file about to be applied.

    Returns:
        The reason, or None when a plain reload is enough.
    """
    if old_ini is None:
        return None
    try:
        old, new = parse_ini(old_ini), parse_ini(new_ini)
    except RenderError:
        return None
    old_dbs, new_dbs = old.get("databases", {}), new.get("databases", {})
    if any(key in new_dbs and new_dbs[key] != value for key, value in old_dbs.items()):
        return "target"
    old_pgb, new_pgb = old.get("pgbouncer", {}), new.get("pgbouncer", {})
    if _pool_mode(old) != _pool_mode(new):
        return "pool_mode"
    for key in sorted(DRAIN_POOL_KEYS):
        before, after = _int(old_pgb.get(key)), _int(new_pgb.get(key))
        if after and (before == 0 or after < before):
            return "cap"
    return None


def _pool_mode(parsed: Mapping[str, Mapping[str, str]]) -> str:
    return parsed.get("pgbouncer", {}).get("pool_mode", "session")


def pool_mode_changed(old_ini: str | None, new_ini: str) -> bool:
    """Whether ``pool_mode`` differs between two ini files (False when one does not parse)."""
    if old_ini is None:
        return False
    try:
        return _pool_mode(parse_ini(old_ini)) != _pool_mode(parse_ini(new_ini))
    except RenderError:
        return False


@dataclass(frozen=True)
class ApplyResult:
    """What :meth:`Workload.apply` did, for the charm's log.

    Attributes:
        written: files whose content changed (or that were created).
        removed: files deleted (mapped to None, or inis of processes no longer wanted).
        started: services Pebble started (new, or not running before).
        reloaded: services sent SIGHUP: they re-read their files, clients stay connected.
        restarted: services restarted, one at a time, for a change a reload ignores.
        stopped: services of processes no longer wanted, and those handed over.
        paused: services held in PAUSE around their reload, and why (``drain_reason``).
        handed_over: ``"<old> -> <new>"`` for each process handed over to another slot: the
            new service was started (on the new port, or in the new pool mode).
        handover_kinds: why processes were handed over, sorted: ``port`` (another port), and
            the same-port kinds ``pool_mode``, ``restart`` (a no-reload key or a changed
            service definition) and ``processes`` (fewer processes: the extra ones retire).
        draining: old services left serving their clients: on the old port after a port change
            (stopped by a later apply with ``drain_old``), or closed to new clients after a
            same-port hand-over (``drain_same_port``).
        draining_same_port: those of ``draining`` on the current port.
        moved_from: the old port, when processes were handed over.
    """

    written: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    started: tuple[str, ...] = ()
    reloaded: tuple[str, ...] = ()
    restarted: tuple[str, ...] = ()
    stopped: tuple[str, ...] = ()
    paused: tuple[str, ...] = ()
    pause_reason: str | None = None
    handed_over: tuple[str, ...] = ()
    handover_kinds: tuple[str, ...] = ()
    draining: tuple[str, ...] = ()
    draining_same_port: tuple[str, ...] = ()
    moved_from: int | None = None

    @property
    def handover_reason(self) -> str | None:
        """:attr:`handover_kinds` as one text (for the log), None without a hand-over."""
        return ", ".join(self.handover_kinds) or None

    @property
    def changed(self) -> bool:
        """Whether anything at all was done."""
        return any(
            (self.written, self.removed, self.started, self.reloaded, self.restarted, self.stopped)
        )

    def __str__(self) -> str:
        parts = [
            f"{name} {', '.join(values)}"
            for name, values in (
                ("wrote", self.written),
                ("removed", self.removed),
                ("started", self.started),
                ("reloaded", self.reloaded),
                ("restarted", self.restarted),
                ("stopped", self.stopped),
                (f"handed over ({self.handover_reason})", self.handed_over),
                ("left draining", self.draining),
                (f"paused ({self.pause_reason})", self.paused),
            )
            if values
        ]
        return "; ".join(parts) or "nothing changed"


@dataclass
class _Plan:
    """What apply is about to do; filled in step by step."""

    written: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    restart: set[int] = field(default_factory=set)
    reload: set[int] = field(default_factory=set)
    handover: dict[int, str] = field(default_factory=dict)
    drain: dict[int, str] = field(default_factory=dict)
    reload_all: bool = False


@contextlib.contextmanager
def _pebble_errors(what: str) -> Iterator[None]:
    """Turn Pebble's exceptions into this module's, saying what was being done."""
    try:
        yield
    except pebble.ConnectionError as exc:
        raise WorkloadUnreachable(f"{what}: cannot reach Pebble ({exc})") from exc
    except (pebble.APIError, pebble.ChangeError, pebble.PathError, pebble.ExecError) as exc:
        raise WorkloadError(f"{what}: {exc}") from exc


class Workload:
    """PgBouncer in its container, seen through Pebble.

    Args:
        container: the ``pgbouncer`` container.
        base_dir: where PgBouncer's files live in it.
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

    def served_client_tls(self) -> tuple[str, str, str] | None:
        """The certificate, key and CA PgBouncer serves clients with now; None without TLS.

        The last good certificate (issue 22): when what the provider sends now cannot be used,
        the charm keeps serving these rather than turning TLS off.

        Raises:
            WorkloadError: Pebble cannot be reached or a file cannot be read.
        """
        texts = [
            self._read(path(self._base_dir), "read the served certificate")
            for path in (client_tls_cert_path, client_tls_key_path, client_tls_ca_path)
        ]
        if any(text is None for text in texts):
            return None
        cert, key, ca = texts
        assert cert is not None and key is not None and ca is not None  # noqa: S101 (checked)
        return cert, key, ca

    def is_running(self) -> bool:
        """Whether every enabled PgBouncer service in the plan is active (False if none)."""
        try:
            plan = self._container.get_plan()
            wanted = [
                name
                for name, service in plan.services.items()
                if name.startswith(SERVICE_PREFIX) and service.startup == "enabled"
            ]
            if not wanted:
                return False
            services = self._container.get_services(*wanted)
        except (pebble.ConnectionError, pebble.APIError):
            return False
        return len(services) == len(wanted) and all(s.is_running() for s in services.values())

    def apply(
        self,
        files: Mapping[str, str | None],
        processes: int,
        drain_old: bool = True,
        wait_for_clients: bool = True,
        drain_same_port: bool = True,
    ) -> ApplyResult:
        """Bring the container to ``files`` and ``processes`` with the least disruption.

        Each process index has :data:`~pgbouncer.config.SLOTS` slots (``pgbouncer_<i>``,
        ``pgbouncer_<i>_twin``, ``pgbouncer_<i>_twin2``), each with its own ini file, socket
        directory and ``peer_id``; one of them *serves* (takes new clients), taken in turn.

        1. Decide from the serving slot's file (old against new) and its Pebble definition what
           each index needs: nothing, a reload, a reload wrapped in PAUSE … RESUME
           (:func:`drain_reason`), a restart in place, or a *hand-over* to the next free slot:
           - a ``listen_port`` change: that slot starts on the new port; the old process keeps
             serving its clients on the old port (*draining*); with no slot free, the one that
             served longest ago is stopped first;
           - a ``pool_mode`` change, a key a reload ignores
             (:func:`pgbouncer.config.needs_restart`) or a changed service definition (a charm
             upgrade), when ``wait_for_clients`` (PgBouncer >= 1.23) and a slot is free: that
             slot starts on the same port and the old process gets SIGTERM at once, which makes
             PgBouncer stop accepting and serve its clients, as they started, until they leave.
             Without a free slot, or on an older PgBouncer, the change is made in place.
           Processes ``>= processes`` that served until now *retire* the same way (SIGTERM), or
           stop at once without ``wait_for_clients``.
        2. Write each file whose content differs (0600, owned by ``postgres``): the serving
           slot's ini only (a draining process keeps the file it runs with, so that a reload
           can never switch its mode), the shared files, the exporter's configuration pointed at
           the serving slots; delete files mapped to None and the inis of processes
           ``>= processes`` that no longer run.
        3. Create each serving slot's run directory (0700, ``postgres``), stop the draining
           processes whose time is up (``drain_old``, ``drain_same_port``) or whose slot a
           hand-over needs, add the layer (serving slots enabled, every other PgBouncer service
           disabled) and start serving slots that are not running, then SIGTERM the processes
           handed over on the same port and the retiring ones. No replan: Pebble's replan
           restarts every service it has run whose definition changed, a stopped and disabled
           one included.
        4. Restart in place one at a time, SIGHUP the others whose files changed; a draining
           process is never signalled.

        Args:
            files: container path → content, or None to delete it. Paths must be under the base
                directory; every slot's ini of each process is required
                (:func:`pgbouncer.config.render_files`).
            processes: how many PgBouncer processes to run (1 to 4).
            drain_old: stop the processes left draining on another port by an earlier port
                change (the caller decides when their clients have had time enough to move).
            drain_same_port: stop the processes left draining on this port by an earlier
                same-port hand-over (the caller decides when the bound has passed). A draining
                process keeps its ini, so the port in it tells the two apart.
            wait_for_clients: PgBouncer answers SIGTERM by serving its clients until they leave
                (>= 1.23); without it every change is made in place and retiring processes stop
                at once.

        Returns:
            What was done.

        Raises:
            ValueError: bad ``processes``, a path outside the base directory, or an ini missing.
            WorkloadUnreachable: Pebble cannot be reached.
            WorkloadError: Pebble refused an operation (the files written so far stay).
        """
        if not MIN_PROCESSES <= processes <= MAX_PROCESSES:
            raise ValueError(f"processes must be {MIN_PROCESSES} to {MAX_PROCESSES}")
        base = PurePosixPath(self._base_dir)
        for path in files:
            if PurePosixPath(path).parent != base:
                raise ValueError(f"{path} is not a file directly under {self._base_dir}")
        for i in range(processes):
            for slot in range(SLOTS):
                if files.get(ini_path(i, self._base_dir, slot)) is None:
                    raise ValueError(f"no configuration given for process {i}")
        listen_port = self._listen_port(files[ini_path(0, self._base_dir)] or "")
        # The metrics exporter runs when its configuration is among the files (observability).
        exporter_path = exporter_config_path(self._base_dir)
        exporter_files = {exporter_path, passfile_path(self._base_dir)}
        exporter = files.get(exporter_path) is not None
        slot_inis = {
            ini_path(i, self._base_dir, slot): (i, slot)
            for i in range(MAX_PROCESSES)
            for slot in range(SLOTS)
        }

        with _pebble_errors("list the services"):
            before = self._container.get_services()
        running = {name for name, info in before.items() if info.is_running()}
        enabled = {
            n for n, info in before.items() if info.startup == pebble.ServiceStartup.ENABLED
        }
        live = _live_services(running, enabled)
        # Processes no longer wanted (fewer processes) that served until now: they retire. A
        # running PgBouncer service that does not serve is a *stray*, draining since an
        # earlier apply (a hand-over, or a retirement).
        retiring = sorted(
            name
            for name in running
            if (index := service_index(name)) is not None
            and index >= processes
            and name in enabled
        )
        strays = {
            name
            for name in running - {live[i] for i in live if i < processes} - set(retiring)
            if service_index(name) is not None
        }
        # One listing, then a read only of the files that exist: a hook pays for the files in
        # use, not for every file the charm might write (TLS, exporter, inis of 4 processes).
        present = self._present_files()
        old_content: dict[str, str | None] = {}

        def old(path: str) -> str | None:
            if path not in old_content:
                old_content[path] = (
                    self._read(path, "read the current files") if path in present else None
                )
            return old_content[path]

        # An index that does not serve yet starts in a slot where nothing runs (a process that
        # retired may still drain in one); with every slot draining, in the first (stopped).
        fresh = {
            i: next(
                (n for k in range(SLOTS) if (n := service_name(i, k)) not in running),
                service_name(i),
            )
            for i in range(processes)
            if i not in live
        }
        with _pebble_errors("read the plan"):
            current_plan = self._container.get_plan()
        plan = _Plan()
        moved_from: int | None = None
        # Where each serving process would be handed over: the first free slot in turn; with
        # none free (a port change may still go), the one that served longest ago, stopping
        # what still drains there.
        free = {
            i: next((n for n in next_slots(name) if n not in running), None)
            for i, name in live.items()
        }
        for i in range(processes):
            path = self._slot_ini(live.get(i) or fresh[i])
            before_ini, after_ini = old(path), files[path] or ""
            # Same port, new process: possible when a slot is free and the old process
            # can serve its clients after SIGTERM (PgBouncer >= 1.23).
            same_port = wait_for_clients and free.get(i) is not None
            # A charm upgrade that changed the service's definition needs a new process too.
            redefined = i in live and self._redefined(current_plan, live[i])
            if before_ini == after_ini:
                if redefined and same_port:
                    plan.handover[i] = "restart"
                continue
            if needs_restart(before_ini, after_ini):
                before_port, after_port = (
                    self._listen_port(before_ini or ""),
                    self._listen_port(after_ini),
                )
                moved = None not in (before_port, after_port) and before_port != after_port
                if moved and i in live:
                    plan.handover[i] = "port"
                    moved_from = before_port
                elif same_port:
                    plan.handover[i] = "restart"
                else:
                    plan.restart.add(i)
            elif same_port and pool_mode_changed(before_ini, after_ini):
                plan.handover[i] = "pool_mode"
            elif pool_mode_changed(before_ini, after_ini):
                # No free slot, or PgBouncer < 1.23: in place, by a restart. A reload would
                # switch the mode under clients already connected, whose prepared statements
                # then fail on every later query (seen: 116 to 455 per change); a restart cuts
                # each of them once, and they reconnect to a process in the new mode.
                plan.restart.add(i)
            elif same_port and redefined:
                plan.handover[i] = "restart"
            else:
                plan.reload.add(i)
                reason = drain_reason(before_ini, after_ini)
                if reason:
                    plan.drain[i] = reason

        serving = {i: live.get(i) or fresh[i] for i in range(processes)}
        handover = {i: free[i] or next_slots(live[i])[0] for i in sorted(plan.handover)}
        serving.update(handover)
        slots = {i: service_slot(name) for i, name in serving.items()}

        wanted: dict[str, str | None] = {}
        for path, content in files.items():
            slot = slot_inis.get(path)
            if slot is None:
                wanted[path] = content
            elif slot[0] < processes and self._slot_ini(serving[slot[0]]) == path:
                wanted[path] = content  # the serving slot's file; a draining one keeps its own

        # A hand-over needs its slot: a process still draining there from the hand-over
        # before is stopped first (its remaining clients are cut). The others drain until the
        # caller says their time is up.
        def kept_ini(name: str) -> str:
            path = self._slot_ini(name)
            moved = path + DRAINING_SUFFIX
            return (old(path) if path in present or moved not in present else old(moved)) or ""

        same_port_strays = {
            name for name in strays if self._listen_port(kept_ini(name)) == listen_port
        }
        busy_set = (set(handover.values()) | set(fresh.values())) & strays
        if drain_old:
            busy_set |= strays - same_port_strays
        if drain_same_port:
            busy_set |= same_port_strays
        # A PgBouncer service that is neither running nor stopped (Pebble's back-off or error),
        # and does not serve: a drained process Pebble tried to bring back. Stopped for good.
        failing = {
            name
            for name, info in before.items()
            if service_index(name) is not None
            and info.current not in (pebble.ServiceStatus.ACTIVE, pebble.ServiceStatus.INACTIVE)
        } - set(serving.values())
        busy_set |= failing
        busy = sorted(busy_set)
        # Fewer processes: with PgBouncer >= 1.23 the retiring ones drain like a same-port
        # hand-over (SIGTERM below, stopped at the bound); before, they stop at once.
        retire_now = [] if wait_for_clients else retiring
        retire_draining = retiring if wait_for_clients else []
        keep = (strays - busy_set) | set(retire_draining)  # draining processes keep their file
        for path, (index, _slot) in slot_inis.items():
            if index >= processes and not any(self._slot_ini(name) == path for name in keep):
                wanted[path] = None
        if exporter:
            wanted[exporter_path] = retarget(files[exporter_path] or "", slots, self._base_dir)
        for path, content in sorted(wanted.items()):
            current = old(path)
            if content is None:
                if current is not None:
                    self._remove(path)
                    plan.removed.append(path)
                continue
            if current == content:
                continue
            self._write(path, content)
            plan.written.append(path)
            if path not in exporter_files and path not in slot_inis:
                plan.reload_all = True  # auth or TLS files: every serving process re-reads them
        self._make_run_dirs(serving.values())

        stopped: list[str] = []
        if retire_now:
            with _pebble_errors("stop the processes no longer wanted"):
                self._container.stop(*retire_now)
            stopped = list(retire_now)
        if busy:
            with _pebble_errors("stop the processes left draining"):
                self._container.stop(*busy)
            stopped += busy
        running = running - set(busy)
        started, restarted = self._start_serving(
            serving, listen_port, running, current_plan, exporter
        )
        # A same-port hand-over: the new process accepts on the port; now the old one stops
        # accepting and serves its clients, as they started, until they leave.
        closing = [live[i] for i, why in plan.handover.items() if why != "port"]
        closing += retire_draining
        if closing:
            with _pebble_errors("close the old processes to new clients"):
                self._container.send_signal("SIGTERM", *closing)
            for name in closing:
                path = self._slot_ini(name)
                content = old(path)
                if content is not None:
                    self._write(path + DRAINING_SUFFIX, content)
                    self._remove(path)
                    plan.written.append(path + DRAINING_SUFFIX)
                    plan.removed.append(path)
        # Moved-aside files of slots that no longer drain (stopped, exited, or serving again).
        still_draining = (strays - set(busy)) | set(closing)
        for path in sorted(present):
            if not path.endswith(DRAINING_SUFFIX):
                continue
            slot = slot_inis.get(path.removesuffix(DRAINING_SUFFIX))
            if slot is None or service_name(*slot) not in still_draining:
                self._remove(path)
                plan.removed.append(path)
        draining = sorted((strays - set(busy)) | {live[i] for i in handover} | set(closing))
        draining_same_port = sorted((same_port_strays - set(busy)) | set(closing))

        reloaded: list[str] = []
        for i in range(processes):
            name = serving[i]
            if name not in running or name in started or name in restarted:
                continue
            if i in plan.restart:
                # One at a time: the other processes keep serving the port meanwhile.
                with _pebble_errors(f"restart {name}"):
                    self._container.restart(name)
                restarted.append(name)
            elif plan.reload_all or i in plan.reload:
                reloaded.append(name)
        paused = [name for name in reloaded if (index := service_index(name)) in plan.drain]
        if reloaded:
            self._reload(reloaded, paused)
        if (
            exporter
            and EXPORTER_SERVICE in running
            and EXPORTER_SERVICE not in started + restarted
            and exporter_path in plan.written
        ):
            # It re-reads its configuration on SIGHUP (within 4 s), serving scrapes meanwhile;
            # a restart would refuse them while it starts. The password file is read by libpq
            # at each connection, so a change there alone needs nothing.
            with _pebble_errors(f"SIGHUP {EXPORTER_SERVICE}"):
                self._container.send_signal("SIGHUP", EXPORTER_SERVICE)
            reloaded.append(EXPORTER_SERVICE)
        kinds = sorted(set(plan.handover.values()) | ({"processes"} if retire_draining else set()))
        return ApplyResult(
            written=tuple(plan.written),
            removed=tuple(plan.removed),
            started=tuple(started),
            reloaded=tuple(reloaded),
            restarted=tuple(restarted),
            stopped=tuple(stopped),
            paused=tuple(paused),
            pause_reason=", ".join(sorted(set(plan.drain.values()))) if paused else None,
            handed_over=tuple(f"{live[i]} -> {new}" for i, new in handover.items()),
            handover_kinds=tuple(kinds),
            draining=tuple(draining),
            draining_same_port=tuple(draining_same_port),
            moved_from=moved_from if "port" in kinds else None,
        )

    def _reload(self, reloaded: list[str], paused: list[str]) -> None:
        """SIGHUP ``reloaded``; those in ``paused`` are held in PAUSE around it.

        PAUSE (SIGUSR1), :data:`PAUSE_SETTLE_S`, RELOAD (SIGHUP), :data:`RESUME_AFTER_S`, RESUME
        (SIGUSR2). RESUME is sent even when the reload fails, so that a Pebble error can never
        leave clients waiting on a paused process; the longest a client waits is the sum of the
        two delays (plus PgBouncer's ``server_login_retry`` when PAUSE cut a login in flight).
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
    @staticmethod
    def _listen_port(ini: str) -> int | None:
        try:
            port = parse_ini(ini).get("pgbouncer", {}).get("listen_port")
        except RenderError:
            return None
        return int(port) if port and port.isdigit() else None

    def _present_files(self) -> set[str]:
        """The paths of the files now in the base directory (one Pebble call)."""
        try:
            with _pebble_errors("list the files"):
                entries = self._container.list_files(self._base_dir)
        except WorkloadError as exc:
            cause = exc.__cause__
            if isinstance(cause, pebble.APIError) and cause.code == 404:
                return set()
            if isinstance(cause, pebble.PathError) and cause.kind == "not-found":
                return set()
            raise
        return {str(PurePosixPath(self._base_dir) / entry.name) for entry in entries}

    def _read(self, path: str, what: str) -> str | None:
        try:
            with _pebble_errors(what), self._container.pull(path) as stream:
                return stream.read()
        except WorkloadError as exc:
            cause = exc.__cause__
            if isinstance(cause, pebble.PathError) and cause.kind == "not-found":
                return None
            raise

    def _write(self, path: str, content: str) -> None:
        with _pebble_errors(f"write {path}"):
            self._container.push(
                path,
                content,
                make_dirs=True,
                permissions=FILE_MODE,
                user=WORKLOAD_USER,
                group=WORKLOAD_USER,
            )

    def _remove(self, path: str) -> None:
        with _pebble_errors(f"remove {path}"):
            self._container.remove_path(path)

    def _redefined(self, plan: pebble.Plan, name: str) -> bool:
        """Whether PgBouncer service ``name`` runs from a definition other than this charm's.

        As after an upgrade that changed the layer. Only the fields the charm sets count, each
        as the plan holds it: a field Pebble adds does not, nor whether the slot serves.
        """
        index = service_index(name)
        if index is None or name not in plan.services:
            return False
        wanted = pebble.Service(name, _service(index, self._base_dir, name)).to_dict()
        running = plan.services[name].to_dict()
        return any(
            running.get(key) != value
            for key, value in wanted.items()
            if key not in ("startup", "override")
        )

    def _slot_ini(self, name: str) -> str:
        """The ini file of PgBouncer service ``name`` (either slot of an index)."""
        index = service_index(name)
        if index is None:
            raise ValueError(f"{name} is not a PgBouncer service")
        return ini_path(index, self._base_dir, service_slot(name))

    def _make_run_dirs(self, names: Iterable[str]) -> None:
        for name in names:
            index = service_index(name)
            if index is None:
                continue
            path = run_dir(index, self._base_dir, service_slot(name))
            with _pebble_errors(f"create {path}"):
                if not self._container.exists(path):
                    self._container.make_dir(
                        path,
                        make_parents=True,
                        permissions=RUN_DIR_MODE,
                        user=WORKLOAD_USER,
                        group=WORKLOAD_USER,
                    )

    def _start_serving(
        self,
        serving: Mapping[int, str],
        listen_port: int | None,
        running: set[str],
        current: pebble.Plan,
        exporter: bool = False,
    ) -> tuple[list[str], list[str]]:
        """Add the layer and start what should serve; restart what the layer redefined.

        The layer enables the service ``serving`` names for each process and disables every
        other PgBouncer service the plan holds (a layer cannot delete a service). Services are
        then started and restarted by name, never by replan (see :meth:`apply`).

        Returns:
            The services started, and the running ones restarted because their definition in
            the plan changed (a charm upgrade changing the layer).
        """
        layer = build_layer(len(serving), listen_port, self._base_dir, exporter, serving)
        services = layer.setdefault("services", {})
        if not exporter and EXPORTER_SERVICE in current.services:
            # No stats password (yet, or any more): keep the exporter in the plan, stopped.
            services[EXPORTER_SERVICE] = {
                **exporter_service(self._base_dir),
                "startup": "disabled",
            }
            if EXPORTER_SERVICE in running:
                with _pebble_errors(f"stop {EXPORTER_SERVICE}"):
                    self._container.stop(EXPORTER_SERVICE)
        for name in current.services:
            index = service_index(name)
            if index is not None and name not in services:
                services[name] = {**_service(index, self._base_dir, name), "startup": "disabled"}
        with _pebble_errors("add the layer"):
            self._container.add_layer(LAYER_LABEL, layer, combine=True)
            after = self._container.get_plan()
        wanted = list(serving.values()) + ([EXPORTER_SERVICE] if exporter else [])
        if after.to_dict() == current.to_dict() and all(name in running for name in wanted):
            return [], []
        changed = [
            name
            for name in wanted
            if name in running
            and name in current.services
            and current.services[name].to_dict() != after.services[name].to_dict()
        ]
        start = [name for name in wanted if name not in running]
        if start:
            with _pebble_errors("start " + ", ".join(start)):
                self._container.start(*start)
        for name in changed:
            with _pebble_errors(f"restart {name}"):
                self._container.restart(name)
        return start, changed


def _live_services(running: set[str], enabled: set[str]) -> dict[int, str]:
    """The serving service of each running process index: the running slot the plan enables.

    A running slot the plan does not enable drains (after a hand-over or a retirement) and never
    serves again: a process index that comes back gets a fresh slot.
    """
    live: dict[int, str] = {}
    for name in sorted(running & enabled, key=lambda n: _parse_service(n) or ()):
        index = service_index(name)
        if index is not None:
            live.setdefault(index, name)
    return live
