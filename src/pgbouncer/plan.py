"""What a change to the container takes: a pure plan from a snapshot and the wanted files.

:func:`plan_apply` reads a :class:`ContainerSnapshot` (what Pebble reported: services, plan,
files) and the files the charm rendered, and returns a :class:`WorkloadPlan`: the ordered steps
that bring the container there with the least disruption, and the :class:`ApplyResult` they
produce when they all succeed. Nothing here calls Pebble; :mod:`pgbouncer.workload` takes the
snapshot and carries the steps out. Slot naming is :mod:`pgbouncer.slots`.

The rules (docs/workload.md):

1. For each process index, from the serving slot's file (old against new) and its Pebble
   definition: nothing, a reload, a reload wrapped in PAUSE … RESUME (:func:`drain_reason`), a
   restart in place, or a *hand-over* to the next free slot:
   - a ``listen_port`` change: that slot starts on the new port; the old process keeps serving
     its clients on the old port (*draining*); with no slot free, the one that served longest
     ago is stopped first;
   - a ``pool_mode`` change, a key a reload ignores (:func:`pgbouncer.config.needs_restart`)
     or a changed service definition (a charm upgrade), when ``wait_for_clients`` (PgBouncer
     >= 1.23) and a slot is free: that slot starts on the same port and the old process gets
     SIGTERM at once, which makes PgBouncer stop accepting and serve its clients, as they
     started, until they leave. Without a free slot, or on an older PgBouncer, the change is
     made in place by a restart (a reload would switch the mode under connected clients).
   Processes ``>= processes`` that served until now *retire* the same way (SIGTERM), or stop at
   once without ``wait_for_clients``.
2. Write each file whose content differs: the serving slot's ini only (a draining process keeps
   the file it runs with), the shared files, the exporter's configuration pointed at the serving
   slots; delete files mapped to None and the inis of processes that no longer run.
3. Create each serving slot's run directory, stop the draining processes whose time is up or
   whose slot a hand-over needs, add the layer when it differs (serving slots enabled, every
   other PgBouncer service disabled), start serving slots that are not running and restart those
   the layer redefined, then SIGTERM the processes handed over on the same port and the retiring
   ones and move their inis aside. No replan: Pebble's replan restarts every service it has run
   whose definition changed, a stopped and disabled one included.
4. Restart in place one at a time, SIGHUP the others whose files changed; a draining process is
   never signalled.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from pgbouncer.exporter import (
    EXPORTER_SERVICE,
    exporter_config_path,
    exporter_service,
    passfile_path,
    retarget,
)
from pgbouncer.go_exporter import is_targets
from pgbouncer.ini import (
    RenderError,
    needs_restart,
    parse_ini,
)
from pgbouncer.slots import (
    DEFAULT_BASE_DIR,
    DRAINING_SUFFIX,
    MAX_PROCESSES,
    MIN_PROCESSES,
    SLOTS,
    ini_path,
    next_slots,
    parse_service,
    run_dir,
    service_index,
    service_name,
    service_slot,
    slot_ini,
)

LAYER_LABEL = "pgbouncer"
CHECK_NAME = "pgbouncer-listening"
WORKLOAD_USER = "postgres"
"""The user PgBouncer runs as (it refuses root) and that owns its files."""

KILL_DELAY = "10s"
"""How long a stopping process may drain. PgBouncer 1.24 closes its listening socket at once
on SIGTERM (new clients go to the other processes) and then waits for its clients with no time
limit; Pebble sends SIGKILL after this delay. In-flight transactions get this long to finish."""

WAIT_FOR_CLIENTS_SINCE = (1, 23)
"""PgBouncer answers SIGTERM by closing its listener and serving its clients until they leave
(``SHUTDOWN WAIT_FOR_CLIENTS``) from 1.23; before, SIGTERM is an immediate shutdown. From 1.25 a
login in flight at the SIGTERM is refused (``pooler is shutting down``) where 1.24 served it;
no later client reaches the process, so the hand-over stays the least disruptive path there
too (docs/workload.md, "Same-port hand-over on PgBouncer 1.25+")."""

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

FILE_MODE = 0o600
RUN_DIR_MODE = 0o700

ACTIVE, INACTIVE = "active", "inactive"
ENABLED = "enabled"


# -- the Pebble definitions ------------------------------------------------------------------
def service_definition(index: int, base_dir: str, name: str | None = None) -> dict[str, Any]:
    """The Pebble service running slot ``name`` (default: slot 0) of process ``index``."""
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
    exporter: bool | str = False,
    serving: Mapping[int, str] | None = None,
) -> dict[str, Any]:
    """The Pebble layer running ``processes`` PgBouncer processes.

    The services differ only by their ini file; everything that tells them apart (socket dir,
    ``peer_id``) is in that file, so a configuration change never changes the layer.

    The check: with ``listen_port``, one TCP check (level ``ready``) on the shared port. It needs
    nothing in the image, unlike an exec check (a minimal image has no ``psql`` or shell). It
    cannot single out one process: with ``so_reuseport`` the kernel picks the process. A process
    that dies is already restarted by Pebble itself (``on-failure: restart``); what the check
    adds is readiness: Kubernetes stops routing to the pod when no process accepts connections.

    Args:
        processes: how many services, 1 to 4.
        listen_port: the port the check connects to; None for no check.
        base_dir: where the ini files are.
        exporter: whether to run the metrics exporter (:mod:`pgbouncer.exporter`) too;
            ``"go"`` for the default image's Go exporters (:mod:`pgbouncer.go_exporter`).
        serving: the service each process index runs as (any of its slots); indices left out
            run as ``pgbouncer_<i>``.

    Returns:
        The layer, every entry with ``override: replace``: the serving service of each index,
        enabled. (The other slots of an index are the caller's to keep, disabled.)

    Raises:
        ValueError: ``processes`` outside 1 to 4.
    """
    if not MIN_PROCESSES <= processes <= MAX_PROCESSES:
        raise ValueError(f"processes must be {MIN_PROCESSES} to {MAX_PROCESSES}")
    services: dict[str, Any] = {}
    layer: dict[str, Any] = {
        "summary": "PgBouncer",
        "description": f"{processes} PgBouncer processes sharing one port (so_reuseport)",
        "services": services,
    }
    for i in range(processes):
        name = (serving or {}).get(i, service_name(i))
        if service_index(name) != i:
            raise ValueError(f"{name} does not run process {i}")
        services[name] = service_definition(i, base_dir, name)
    if exporter:
        services[EXPORTER_SERVICE] = exporter_service(base_dir, go=exporter == "go")
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


# -- reading inis ------------------------------------------------------------------------------
def _int(value: str | None) -> int:
    return int(value) if value and value.isdigit() else 0


def _pool_mode(parsed: Mapping[str, Mapping[str, str]]) -> str:
    return parsed.get("pgbouncer", {}).get("pool_mode", "session")


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


def pool_mode_changed(old_ini: str | None, new_ini: str) -> bool:
    """Whether ``pool_mode`` differs between two ini files (False when one does not parse)."""
    if old_ini is None:
        return False
    try:
        return _pool_mode(parse_ini(old_ini)) != _pool_mode(parse_ini(new_ini))
    except RenderError:
        return False


def listen_port_of(ini: str | None) -> int | None:
    """The ``listen_port`` an ini file sets (None when absent or unreadable)."""
    try:
        port = parse_ini(ini or "").get("pgbouncer", {}).get("listen_port")
    except RenderError:
        return None
    return int(port) if port and port.isdigit() else None


# -- the snapshot, the plan and its result -----------------------------------------------------
@dataclass(frozen=True)
class ServiceInfo:
    """One Pebble service as listed.

    Its status (``active``, ``inactive``, ``backoff``, ``error``) and its startup
    (``enabled``, ``disabled``).
    """

    current: str
    startup: str

    @property
    def running(self) -> bool:
        """Whether the service is active."""
        return self.current == ACTIVE


@dataclass(frozen=True)
class ContainerSnapshot:
    """What the container holds, read once per hook (:meth:`pgbouncer.workload.Workload.observe`).

    Attributes:
        services: every service Pebble lists.
        plan_services: the plan's services as ``to_dict()`` gives them.
        plan_checks: the plan's checks, likewise.
        files: path → content of every regular file directly under the base directory.
        base_dir: where PgBouncer's files live.
        listing: the base directory's entries as the settled record compares them (name, type,
            size, permissions, modification time, owner, group); None once a step may have
            changed them (:meth:`after`), or when the files were not read.
    """

    services: Mapping[str, ServiceInfo] = field(default_factory=dict)
    plan_services: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    plan_checks: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    files: Mapping[str, str] = field(default_factory=dict)
    base_dir: str = DEFAULT_BASE_DIR
    listing: tuple[tuple[str, ...], ...] | None = None

    @property
    def running(self) -> frozenset[str]:
        """The services that are active."""
        return frozenset(name for name, info in self.services.items() if info.running)

    @property
    def enabled(self) -> frozenset[str]:
        """The services the plan starts (``startup: enabled``)."""
        return frozenset(name for name, info in self.services.items() if info.startup == ENABLED)

    def serving(self) -> dict[int, str]:
        """The serving service of each running process index: the running slot enabled.

        A running slot the plan does not enable drains (after a hand-over or a retirement) and
        never serves again: an index that comes back gets a fresh slot.
        """
        live: dict[int, str] = {}
        for name in sorted(self.running & self.enabled, key=lambda n: parse_service(n) or ()):
            index = service_index(name)
            if index is not None:
                live.setdefault(index, name)
        return live

    def after(self, plan: WorkloadPlan) -> ContainerSnapshot:
        """The container as it is once every step of ``plan`` succeeded (nothing is read).

        A hook that applies twice (the leader's set-up changed what to render) plans the second
        time from this, not from a second read of the container.
        """
        files = dict(self.files)
        services = dict(self.services)
        plan_services = {name: dict(entry) for name, entry in self.plan_services.items()}
        checks = {name: dict(entry) for name, entry in self.plan_checks.items()}

        def startup(name: str) -> str:
            return str(plan_services.get(name, {}).get("startup", "disabled"))

        for step in plan.steps:
            kind = step[0]
            if kind == "write":
                files[step[1]] = step[2]
            elif kind == "remove":
                files.pop(step[1], None)
            elif kind == "stop":
                for name in step[1]:
                    services[name] = ServiceInfo(INACTIVE, startup(name))
            elif kind == "add_layer":
                for name, entry in step[1].get("services", {}).items():
                    plan_services[name] = dict(entry)
                    current = services[name].current if name in services else INACTIVE
                    services[name] = ServiceInfo(current, startup(name))
                checks.update({n: dict(c) for n, c in step[1].get("checks", {}).items()})
            elif kind in ("start", "restart"):
                for name in step[1] if kind == "start" else (step[1],):
                    services[name] = ServiceInfo(ACTIVE, startup(name))
        return ContainerSnapshot(
            services=services,
            plan_services=plan_services,
            plan_checks=checks,
            files=files,
            base_dir=self.base_dir,
            listing=self.listing if not plan.steps else None,
        )

    def loose_files(self) -> frozenset[str]:
        """The regular files whose mode is not :data:`FILE_MODE` (rewriting one restores it).

        Every file the charm writes holds or configures a secret; a drift of its mode is
        repaired like a drift of its content. Unknown (no listing) counts as none.
        """
        return frozenset(
            f"{self.base_dir.rstrip('/')}/{row[0]}"
            for row in self.listing or ()
            if row[1] == "file" and row[3] != f"{FILE_MODE:03o}"
        )

    def pgbouncer_running(self) -> bool:
        """Whether every enabled PgBouncer service in the plan is active (False if none)."""
        wanted = [
            name
            for name, service in self.plan_services.items()
            if service_index(name) is not None and service.get("startup") == ENABLED
        ]
        return bool(wanted) and all(
            name in self.services and self.services[name].running for name in wanted
        )


Step = tuple[Any, ...]
"""One effect, carried out in order by :meth:`pgbouncer.workload.Workload.execute`:
``("write", path, content)``, ``("remove", path)``, ``("make_dir", path)``,
``("stop", names)``, ``("add_layer", layer)``, ``("start", names)``, ``("restart", name)``,
``("signal", signal, names)`` and ``("reload", names, paused)`` (SIGHUP, the paused ones held in
PAUSE around it, RESUME sent even when the reload fails)."""


@dataclass(frozen=True)
class ApplyResult:
    """What a plan does, for the charm's status and log.

    Attributes:
        written: files whose content changed (or that were created).
        removed: files deleted (mapped to None, or inis of processes no longer wanted).
        started: services Pebble started (new, or not running before).
        reloaded: services sent SIGHUP: they re-read their files, clients stay connected.
        restarted: services restarted, one at a time, for a change a reload ignores.
        stopped: services of processes no longer wanted, and those handed over.
        paused: services held in PAUSE around their reload, and why (``drain_reason``).
        handed_over: ``"<old> -> <new>"`` for each process handed over to another slot.
        handover_kinds: why processes were handed over, sorted: ``port`` (another port), and
            the same-port kinds ``pool_mode``, ``restart`` (a no-reload key or a changed
            service definition) and ``processes`` (fewer processes: the extra ones retire).
        draining: old services left serving their clients.
        draining_same_port: those of ``draining`` on the current port.
        moved_from: the old port, when processes were handed over to another port.
        serving: the service each process index serves from once the plan is done.
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
    serving: tuple[str, ...] = ()

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


@dataclass(frozen=True)
class WorkloadPlan:
    """The steps, in order, and what they achieve when every one succeeds."""

    steps: tuple[Step, ...]
    result: ApplyResult


@dataclass(frozen=True)
class DrainPolicy:
    """What the charm decided about draining processes (from its clocks and the version).

    Attributes:
        drain_old: stop the processes left draining on another port by an earlier port change
            (their clients have had time enough to move).
        drain_same_port: stop the processes left draining on this port by an earlier same-port
            hand-over (the bound has passed). A draining process keeps its ini (moved aside),
            so the port in it tells the two apart.
        wait_for_clients: PgBouncer answers SIGTERM by serving its clients until they leave
            (>= 1.23); without it every change is made in place and retiring processes stop at
            once.
    """

    drain_old: bool = True
    drain_same_port: bool = True
    wait_for_clients: bool = True


def _same(current: Mapping[str, Any] | None, wanted: Mapping[str, Any]) -> bool:
    """Whether a plan entry already holds ``wanted`` (the fields the charm sets, as written)."""
    if current is None:
        return False
    return all(
        current.get(key) == value for key, value in wanted.items() if key not in ("override",)
    )


def _redefined(current: Mapping[str, Any] | None, wanted: Mapping[str, Any]) -> bool:
    """Whether a service runs from a definition other than ``wanted``.

    As after an upgrade that changed the layer. Only the fields the charm sets count; whether
    the slot serves does not.
    """
    if current is None:
        return False
    return any(
        current.get(key) != value
        for key, value in wanted.items()
        if key not in ("startup", "override")
    )


def change_for(
    before_ini: str | None, after_ini: str, *, serving: bool, slot_free: bool, redefined: bool
) -> tuple[str, str | None]:
    """What one process index needs to go from ``before_ini`` to ``after_ini`` (rule 1).

    Args:
        before_ini: the file its serving (or fresh) slot runs with; None when there is none.
        after_ini: the file wanted.
        serving: whether a process of this index serves now.
        slot_free: whether it can be handed over on the same port: a slot of its index is free
            and PgBouncer waits for its clients on SIGTERM (>= 1.23).
        redefined: whether its running service has another definition than the charm's.

    Returns:
        ``("none", None)``; ``("handover", why)`` with why ``port``, ``pool_mode`` or
        ``restart``; ``("restart", None)`` in place; or ``("reload", drain reason or None)``.
    """
    if before_ini == after_ini:
        return ("handover", "restart") if redefined and slot_free else ("none", None)
    if needs_restart(before_ini, after_ini):
        before_port, after_port = listen_port_of(before_ini), listen_port_of(after_ini)
        moved = None not in (before_port, after_port) and before_port != after_port
        if moved and serving:
            return "handover", "port"
        return ("handover", "restart") if slot_free else ("restart", None)
    if pool_mode_changed(before_ini, after_ini):
        # No free slot, or PgBouncer < 1.23: in place, by a restart. A reload would switch the
        # mode under clients already connected, whose prepared statements then fail on every
        # later query (seen: 116 to 455 per change); a restart cuts each of them once, and they
        # reconnect to a process in the new mode.
        return ("handover", "pool_mode") if slot_free else ("restart", None)
    if slot_free and redefined:
        return "handover", "restart"
    return "reload", drain_reason(before_ini, after_ini)


def check_files(files: Mapping[str, str | None], processes: int, base_dir: str) -> None:
    """Raise ValueError for bad ``processes``, a path outside ``base_dir`` or an ini missing."""
    if not MIN_PROCESSES <= processes <= MAX_PROCESSES:
        raise ValueError(f"processes must be {MIN_PROCESSES} to {MAX_PROCESSES}")
    base = PurePosixPath(base_dir)
    for path in files:
        if PurePosixPath(path).parent != base:
            raise ValueError(f"{path} is not a file directly under {base_dir}")
    for i in range(processes):
        for slot in range(SLOTS):
            if files.get(ini_path(i, base_dir, slot)) is None:
                raise ValueError(f"no configuration given for process {i}")


def _slots_now(
    snapshot: ContainerSnapshot, processes: int
) -> tuple[dict[int, str], list[str], set[str], dict[int, str], dict[int, str | None]]:
    """Who serves, who retires, who drains, where new and handed-over processes go.

    Returns:
        ``live``: the serving slot of each running index; ``retiring``: serving slots of
        indices no longer wanted; ``strays``: running PgBouncer slots that do not serve
        (draining since an earlier apply); ``fresh``: the slot each index that does not serve
        yet starts in; ``free``: the slot each serving index would be handed over to (None when
        every other slot runs).
    """
    running, enabled = snapshot.running, snapshot.enabled
    live = snapshot.serving()
    retiring = sorted(
        name
        for name in running
        if (index := service_index(name)) is not None and index >= processes and name in enabled
    )
    strays = {
        name
        for name in running - {live[i] for i in live if i < processes} - set(retiring)
        if service_index(name) is not None
    }
    # An index that does not serve yet starts in a slot where nothing runs (a process that
    # retired may still drain in one); with every slot draining, in the first (stopped).
    fresh = {
        i: next(
            (n for k in range(SLOTS) if (n := service_name(i, k)) not in running), service_name(i)
        )
        for i in range(processes)
        if i not in live
    }
    # The first free slot in turn; with none free (a port change may still go), None.
    free = {
        i: next((n for n in next_slots(name) if n not in running), None)
        for i, name in live.items()
    }
    return live, retiring, strays, fresh, free


def plan_apply(
    snapshot: ContainerSnapshot,
    files: Mapping[str, str | None],
    processes: int,
    policy: DrainPolicy = DrainPolicy(),
) -> WorkloadPlan:
    """The steps that bring the container from ``snapshot`` to ``files`` and ``processes``.

    Args:
        snapshot: what the container holds now.
        files: container path → content, or None to delete it. Paths must be under the base
            directory; every slot's ini of each process is required
            (:func:`pgbouncer.config.render_files`).
        processes: how many PgBouncer processes to run (1 to 4).
        policy: what may be stopped now, and whether PgBouncer waits for clients on SIGTERM.

    Raises:
        ValueError: see :func:`check_files`.
        RenderError: the exporter's configuration is not one the charm rendered.
    """
    base_dir = snapshot.base_dir
    check_files(files, processes, base_dir)
    listen_port = listen_port_of(files[ini_path(0, base_dir)])
    exporter_path = exporter_config_path(base_dir)
    exporter_files = {exporter_path, passfile_path(base_dir)}
    # The metrics exporter runs when its configuration is among the files (observability);
    # the Go exporters' targets (the default image) name the other kind.
    exporter_text = files.get(exporter_path)
    exporter: bool | str = exporter_text is not None and (
        "go" if is_targets(exporter_text) else True
    )
    slot_inis = {
        ini_path(i, base_dir, slot): (i, slot)
        for i in range(MAX_PROCESSES)
        for slot in range(SLOTS)
    }
    present, running = snapshot.files, set(snapshot.running)
    live, retiring, strays, fresh, free = _slots_now(snapshot, processes)
    handover_why: dict[int, str] = {}
    restart: set[int] = set()
    reload: set[int] = set()
    drain: dict[int, str] = {}
    moved_from: int | None = None
    for i in range(processes):
        path = slot_ini(live.get(i) or fresh[i], base_dir)
        before_ini, after_ini = present.get(path), files[path] or ""
        action, detail = change_for(
            before_ini,
            after_ini,
            serving=i in live,
            slot_free=policy.wait_for_clients and free.get(i) is not None,
            redefined=i in live
            and _redefined(
                snapshot.plan_services.get(live[i]), service_definition(i, base_dir, live[i])
            ),
        )
        if action == "handover":
            handover_why[i] = detail or "restart"
            if detail == "port":
                moved_from = listen_port_of(before_ini)
        elif action == "restart":
            restart.add(i)
        elif action == "reload":
            reload.add(i)
            if detail:
                drain[i] = detail

    serving = {i: live.get(i) or fresh[i] for i in range(processes)}
    handover = {i: free[i] or next_slots(live[i])[0] for i in sorted(handover_why)}
    serving.update(handover)
    slots = {i: service_slot(name) for i, name in serving.items()}

    wanted: dict[str, str | None] = {}
    for path, content in files.items():
        slot = slot_inis.get(path)
        if slot is None:
            wanted[path] = content
        elif slot[0] < processes and slot_ini(serving[slot[0]], base_dir) == path:
            wanted[path] = content  # the serving slot's file; a draining one keeps its own

    def kept_ini(name: str) -> str | None:
        path = slot_ini(name, base_dir)
        return present.get(path, present.get(path + DRAINING_SUFFIX))

    # A hand-over needs its slot: a process still draining there from the hand-over before is
    # stopped first (its remaining clients are cut). The others drain until the policy says
    # their time is up.
    same_port_strays = {name for name in strays if listen_port_of(kept_ini(name)) == listen_port}
    busy_set = (set(handover.values()) | set(fresh.values())) & strays
    if policy.drain_old:
        busy_set |= strays - same_port_strays
    if policy.drain_same_port:
        busy_set |= same_port_strays
    # A PgBouncer service that is neither running nor stopped (Pebble's back-off or error), and
    # does not serve: a drained process Pebble tried to bring back. Stopped for good.
    busy_set |= {
        name
        for name, info in snapshot.services.items()
        if service_index(name) is not None and info.current not in (ACTIVE, INACTIVE)
    } - set(serving.values())
    busy = sorted(busy_set)
    retire_now = [] if policy.wait_for_clients else retiring
    retire_draining = retiring if policy.wait_for_clients else []
    keep = (strays - busy_set) | set(retire_draining)  # draining processes keep their file
    for path, (index, _slot) in slot_inis.items():
        if index >= processes and not any(slot_ini(name, base_dir) == path for name in keep):
            wanted[path] = None
    if exporter:
        wanted[exporter_path] = retarget(files[exporter_path] or "", slots, base_dir)

    steps: list[Step] = _file_steps(wanted, present, snapshot.loose_files())
    written = [step[1] for step in steps if step[0] == "write"]
    removed = [step[1] for step in steps if step[0] == "remove"]
    # Auth or TLS files: every serving process re-reads them.
    reload_all = any(path not in exporter_files and path not in slot_inis for path in written)
    for name in serving.values():
        index = service_index(name)
        assert index is not None  # noqa: S101 (serving names are PgBouncer services)
        steps.append(("make_dir", run_dir(index, base_dir, service_slot(name))))

    stopped: list[str] = list(retire_now)
    if retire_now:
        steps.append(("stop", tuple(retire_now)))
    if busy:
        steps.append(("stop", tuple(busy)))
        stopped += busy
    running -= set(busy)
    started, restarted = _start_serving(
        steps, snapshot, serving, listen_port, running, exporter, base_dir
    )
    # A same-port hand-over: the new process accepts on the port; now the old one stops
    # accepting and serves its clients, as they started, until they leave.
    closing = [live[i] for i, why in handover_why.items() if why != "port"] + retire_draining
    if closing:
        steps.append(("signal", "SIGTERM", tuple(closing)))
        for name in closing:
            path = slot_ini(name, base_dir)
            content = present.get(path)
            if content is not None:
                steps += [("write", path + DRAINING_SUFFIX, content), ("remove", path)]
                written.append(path + DRAINING_SUFFIX)
                removed.append(path)
    # Moved-aside files of slots that no longer drain (stopped, exited, or serving again).
    still_draining = (strays - set(busy)) | set(closing)
    stale = _stale_moved_aside(present, still_draining, slot_inis)
    steps += [("remove", path) for path in stale]
    removed += stale
    draining = sorted((strays - set(busy)) | {live[i] for i in handover} | set(closing))
    draining_same_port = sorted((same_port_strays - set(busy)) | set(closing))

    in_place, reloaded = _restart_steps(
        steps,
        [serving[i] for i in range(processes)],
        skip=(set(serving.values()) - running) | set(started) | set(restarted),
        restart={serving[i] for i in restart},
        reload=set(serving.values()) if reload_all else {serving[i] for i in reload},
    )
    restarted += in_place
    paused = [name for name in reloaded if service_index(name) in drain]
    if reloaded:
        steps.append(("reload", tuple(reloaded), tuple(paused)))
    if (
        exporter
        and EXPORTER_SERVICE in running
        and EXPORTER_SERVICE not in started + restarted
        and exporter_path in written
    ):
        step = _exporter_reread(exporter)
        steps.append(step)
        (restarted if step[0] == "restart" else reloaded).append(EXPORTER_SERVICE)
    kinds = sorted(set(handover_why.values()) | ({"processes"} if retire_draining else set()))
    result = ApplyResult(
        written=tuple(written),
        removed=tuple(removed),
        started=tuple(started),
        reloaded=tuple(reloaded),
        restarted=tuple(restarted),
        stopped=tuple(stopped),
        paused=tuple(paused),
        pause_reason=", ".join(sorted({drain[service_index(n) or 0] for n in paused})) or None,
        handed_over=tuple(f"{live[i]} -> {new}" for i, new in handover.items()),
        handover_kinds=tuple(kinds),
        draining=tuple(draining),
        draining_same_port=tuple(draining_same_port),
        moved_from=moved_from if "port" in kinds else None,
        serving=tuple(serving[i] for i in range(processes)),
    )
    return WorkloadPlan(steps=tuple(steps), result=result)


def _restart_steps(
    steps: list[Step], serving: list[str], *, skip: set[str], restart: set[str], reload: set[str]
) -> tuple[list[str], list[str]]:
    """Restart in place one at a time (appended to ``steps``); those restarted, those to reload.

    Rule 4. ``skip``: processes not running, or started or restarted by this plan already (they
    read their files as they started).
    """
    restarted: list[str] = []
    reloaded: list[str] = []
    for name in serving:
        if name in skip:
            continue
        if name in restart:
            # One at a time: the other processes keep serving the port meanwhile.
            steps.append(("restart", name))
            restarted.append(name)
        elif name in reload:
            reloaded.append(name)
    return restarted, reloaded


def _exporter_reread(exporter: bool | str) -> Step:
    """How the running exporter takes a changed configuration."""
    if exporter == "go":
        # The Go exporters take their targets on the command line: a restart re-reads them.
        return ("restart", EXPORTER_SERVICE)
    # Ours re-reads its configuration on SIGHUP (within 4 s), serving scrapes meanwhile; a
    # restart would refuse them while it starts. The password file is read by libpq at each
    # connection, so a change there alone needs nothing.
    return ("signal", "SIGHUP", (EXPORTER_SERVICE,))


def _file_steps(
    wanted: Mapping[str, str | None], present: Mapping[str, str], loose: frozenset[str]
) -> list[Step]:
    """The file steps, sorted by path.

    Write what differs or has another mode than ours (``loose``); remove what is mapped to None
    and exists.
    """
    steps: list[Step] = []
    for path, content in sorted(wanted.items()):
        current = present.get(path)
        if content is None:
            if current is not None:
                steps.append(("remove", path))
        elif current != content or path in loose:
            steps.append(("write", path, content))
    return steps


def _stale_moved_aside(
    present: Mapping[str, str], draining: set[str], slot_inis: Mapping[str, tuple[int, int]]
) -> list[str]:
    """The moved-aside inis (``<ini>.draining``) of slots that no longer drain."""
    stale = []
    for path in sorted(present):
        if not path.endswith(DRAINING_SUFFIX):
            continue
        slot = slot_inis.get(path.removesuffix(DRAINING_SUFFIX))
        if slot is None or service_name(*slot) not in draining:
            stale.append(path)
    return stale


def _start_serving(
    steps: list[Step],
    snapshot: ContainerSnapshot,
    serving: Mapping[int, str],
    listen_port: int | None,
    running: set[str],
    exporter: bool | str,
    base_dir: str,
) -> tuple[list[str], list[str]]:
    """Add the layer (when it differs) and start what should serve; restart what it redefined.

    The layer enables the service ``serving`` names for each process and disables every other
    PgBouncer service the plan holds (a layer cannot delete a service). Services are then
    started and restarted by name, never by replan.

    Returns:
        The services started, and the running ones restarted because their definition in the
        plan changed (a charm upgrade changing the layer).
    """
    current = snapshot.plan_services
    layer = build_layer(len(serving), listen_port, base_dir, exporter, serving)
    services = layer["services"]
    if not exporter and EXPORTER_SERVICE in current:
        # No stats password (yet, or any more): keep the exporter in the plan, stopped.
        services[EXPORTER_SERVICE] = {**exporter_service(base_dir), "startup": "disabled"}
        if EXPORTER_SERVICE in running:
            steps.append(("stop", (EXPORTER_SERVICE,)))
    for name in current:
        index = service_index(name)
        if index is not None and name not in services:
            services[name] = {**service_definition(index, base_dir, name), "startup": "disabled"}
    checks = layer.get("checks", {})
    if not all(_same(current.get(n), s) for n, s in services.items()) or not all(
        _same(snapshot.plan_checks.get(n), c) for n, c in checks.items()
    ):
        steps.append(("add_layer", layer))
    wanted = list(serving.values()) + ([EXPORTER_SERVICE] if exporter else [])
    changed = [
        name
        for name in wanted
        if name in running and name in current and _redefined(current[name], services[name])
    ]
    start = [name for name in wanted if name not in running]
    if start:
        steps.append(("start", tuple(start)))
    steps.extend(("restart", name) for name in changed)
    return start, changed
