"""A multi-unit application played with Scenario: one Context and one State per unit, kept in step.

Scenario runs one hook on one unit with no memory. Juju keeps, between hooks and across units,
what this module keeps for the tests:

- each unit's output state becomes its next input (stored state, deferred events, the container's
  layers and service statuses, its databags);
- the peer relation is one relation seen from every unit: what unit ``k`` writes to its unit
  databag appears in every other unit's ``peers_data[k]``; the application databag (written by
  the leader) is shared;
- for other relations, the leader's writes to the application databag are copied into the other
  units' states (ops itself stops a follower from reading them, as Juju does); the remote side's
  databags are set through :meth:`Application.set_remote`, for every unit at once;
- secrets the leader creates with ``owner="app"`` appear in every unit's state with the same id;
  a follower keeps tracking the revision it last saw until it refreshes, as in Juju; secrets of
  other applications (``owner=None``) are added with :meth:`Application.add_secret`;
- each unit's ``/var/lib/pgbouncer`` is a real directory of its own (a ``testing.Mount``), owned
  by ``postgres``, and, when processes are enabled, each unit has a
  :class:`~harness.processes.PebbleProcessRunner` that replays what the charm asked
  Pebble for after every hook (see ``processes.py`` for how calls are recorded).

Without ``pod_network``, every unit shares the host's network: PgBouncer processes of two units
asked to listen on the same port would share it (``so_reuseport``) or collide, and the charm's
``listen_addr = *`` would open them on every interface. With ``pod_network=True`` each unit whose
processes run gets its own network namespace, as a pod has (:mod:`.network`): the backend ports
given to ``reach`` answer inside it at their usual ``127.0.0.1`` address, and
:meth:`Unit.address` is where the host reaches the unit's ``listen_port`` (the stand-in for the
Kubernetes service address the charm publishes).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, cast

from ops import pebble, testing

from harness.network import LOOPBACK, PodNetwork
from harness.ops_internals import runtime_class
from harness.processes import (
    CONTAINER_PATH,
    PebbleCall,
    PebbleProcessRunner,
    PebbleRecorder,
    SyncReport,
)
from harness.servers.system import pgbouncer_binary, service_tempdir
from pgbouncer.image import VERSION_MARKER

EventFactory = Callable[[Any, testing.State], Any]
"""Builds the event to run from ``ctx.on`` and the unit's current state."""

DEFAULT_JUJU_VERSION = "3.6.2"


@contextlib.contextmanager
def juju_env(overrides: Mapping[str, str] | None) -> Iterator[None]:
    """Set hook environment variables Scenario cannot express, for the runs inside the block.

    Scenario builds ``JUJU_DEPARTING_UNIT`` from the relation's remote application name, so a
    departed hook on a unit that is itself leaving (``JUJU_REMOTE_UNIT=postgresql-k8s/0``,
    ``JUJU_DEPARTING_UNIT=pgbouncer-k8s/1``, what Juju sets on our own scale-down) cannot be
    asked for. This wraps Scenario's (private) environment builder and overrides the given
    variables; ops then reads them as it reads Juju's.
    """
    if not overrides:
        yield
        return
    runtime = runtime_class()  # a private part of Scenario: harness/ops_internals.py
    original = runtime._get_event_env

    def patched(self: Any, *args: Any, **kwargs: Any) -> dict[str, str]:
        env = original(self, *args, **kwargs)
        env.update(overrides)
        return env

    runtime._get_event_env = patched
    try:
        yield
    finally:
        runtime._get_event_env = original


def image_check_exec() -> testing.Exec:
    """The image contract check (``pgbouncer.image``) answering for a complete image."""
    out = subprocess.run(
        [pgbouncer_binary(), "--version"], capture_output=True, text=True, check=True
    ).stdout
    return testing.Exec(["sh", "-c"], stdout=f"{VERSION_MARKER}\n{out}")


def limit_cpus(unit: Unit, cgroup: Path, cpus: int) -> None:
    """Give a harness unit a pod CPU limit: a ``cpu.max`` the charm reads through Pebble.

    The charm runs one PgBouncer process per CPU of that limit (clamped 1 to 4).
    """
    (cgroup / "cpu.max").write_text(f"{cpus * 100000} 100000\n")
    container = unit.container
    mounts = {
        **container.mounts,
        "cgroup": testing.Mount(location="/sys/fs/cgroup", source=cgroup),
    }
    unit.state = dataclasses.replace(
        unit.state, containers={dataclasses.replace(container, mounts=mounts)}
    )


def as_older_charm_left_it(container: testing.Container, key: str) -> testing.Container:
    """``container`` as if an older charm had defined its services without ``key``.

    One layer holding the plan's services (``key`` left out of each) and checks: what a charm
    upgrade finds when the new revision adds a service field (``on-success``).
    """
    services = {
        name: {k: v for k, v in service.to_dict().items() if k != key}
        for name, service in container.plan.services.items()
    }
    checks = {name: check.to_dict() for name, check in container.plan.checks.items()}
    layer = pebble.Layer(cast(pebble.LayerDict, {"services": services, "checks": checks}))
    return dataclasses.replace(container, layers={"pgbouncer": layer})


class Unit:
    """One unit: its Scenario context, its current state, its mount and its processes."""

    def __init__(
        self,
        app: Application,
        unit_id: int,
        ctx: testing.Context,
        state: testing.State,
        mount_dir: Path,
        runner: PebbleProcessRunner | None,
        network: PodNetwork | None = None,
        charm_dir: Path | None = None,
    ):
        self.app = app
        self.charm_dir = charm_dir
        self.network = network
        self.unit_id = unit_id
        self.ctx = ctx
        self.state = state
        self.mount_dir = mount_dir
        self.runner = runner
        self.last_calls: list[PebbleCall] = []
        self.last_report: SyncReport | None = None

    @property
    def name(self) -> str:
        """``<app>/<id>``."""
        return f"{self.app.name}/{self.unit_id}"

    def address(self, pod_port: int | None = None) -> tuple[str, int]:
        """``(host, port)`` where a client on the host reaches this unit's ``pod_port``.

        ``pod_port`` defaults to the ``listen_port`` config value. With a pod network it is a
        relay on the host's loopback; without one, the port itself on ``127.0.0.1``.
        """
        port = int(pod_port if pod_port is not None else self.app.config["listen_port"])
        if self.network is None:
            return ("127.0.0.1", port)
        return ("127.0.0.1", self.network.publish(port))

    def stop_processes(self) -> None:
        """Stop this unit's real processes (the pod goes away; Scenario's state is untouched)."""
        if self.runner is not None:
            self.runner.stop_all()

    @property
    def is_leader(self) -> bool:
        """Whether this unit is the leader in its current state."""
        return self.state.leader

    @property
    def container(self) -> testing.Container:
        """The workload container in the current state."""
        return self.state.get_container(self.app.container_name)

    @property
    def can_connect(self) -> bool:
        """Whether Pebble answers in the workload container."""
        return self.container.can_connect

    @can_connect.setter
    def can_connect(self, value: bool) -> None:
        self._replace_container(can_connect=value)

    def _replace_container(self, **changes: Any) -> None:
        containers = {
            dataclasses.replace(c, **changes) if c.name == self.app.container_name else c
            for c in self.state.containers
        }
        self.state = dataclasses.replace(self.state, containers=containers)

    def relation(self, relation_id: int) -> testing.RelationBase:
        """The relation with this id, as this unit sees it now."""
        return self.state.get_relation(relation_id)

    def secret(self, secret_id: str) -> testing.Secret:
        """A secret as this unit sees it now."""
        return self.state.get_secret(id=secret_id)

    def run(
        self,
        event_factory: EventFactory,
        env: Mapping[str, str] | None = None,
        *,
        in_pod: bool = False,
    ) -> testing.State:
        """Run one event on this unit, keep its output state, replay its Pebble calls.

        Args:
            event_factory: ``lambda on, state: on.<event>(...)``; it gets this unit's
                ``ctx.on`` and current state (take relations, containers and secrets from it).
            env: hook environment variables to force (see :func:`juju_env`).
            in_pod: run the charm in the pod's network namespace (when the unit has one), as
                the charm container shares the pod's network; the processes are replayed
                from this thread all the same.

        Returns:
            the output state (also kept as ``self.state``).
        """
        self._note_exits()
        before = self.state
        event = event_factory(self.ctx.on, before)
        with PebbleRecorder() as recorder, juju_env(env):
            network = self.network if in_pod else None
            try:
                if network is None:
                    out = self.ctx.run(event, before)
                else:
                    out = network.run_inside(lambda: self.ctx.run(event, before))
            except testing.ActionFailed as exc:
                self.state = cast(testing.State, exc.state) if exc.state is not None else before
                self.last_calls = recorder.for_container(self.app.container_name)
                raise
        self.state = out
        self.last_calls = recorder.for_container(self.app.container_name)
        self.app._propagate(self, before)
        if self.runner is not None:
            container = out.get_container(self.app.container_name)
            self.last_report = self.runner.apply(
                self.last_calls, container.plan.services, ready=self.app.process_ready
            )
        return out

    def run_action(self, name: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Run action ``name`` on this unit, in its pod's network when it has one; its results.

        The charm container shares the pod's network, so what the charm reaches on
        ``127.0.0.1`` (the shared PgBouncer port) is the pod's. Raises
        ``testing.ActionFailed`` when the charm fails the action (its state is kept).
        """

        def event(on: Any, _: testing.State) -> Any:
            return on.action(name, params=dict(params or {}))

        self.run(event, in_pod=True)
        return dict(self.ctx.action_results or {})

    def _note_exits(self) -> None:
        """Apply Pebble's exit policies to services whose process ended since the last hook.

        The Pebble stand-in does it (:meth:`harness.pebble_standin.PebbleStandIn.reap`), from the
        definition each process was *started* with (a charm upgrade that adds ``on-success:
        ignore`` to the plan does not change what a running process gets); the statuses it
        changed (``inactive``, or ``error`` for Pebble's back-off) go into the unit's state.
        """
        if self.runner is None or not self.can_connect:
            return
        statuses = self.container.service_statuses
        plan = self.container.plan.services
        self.runner.set_plan(plan)
        changed = {
            name: pebble.ServiceStatus(status)
            for name, status in self.runner.reap().items()
            if name in plan and statuses.get(name) == pebble.ServiceStatus.ACTIVE
        }
        if changed:
            self._replace_container(service_statuses={**statuses, **changed})

    # Shortcuts for the events an end-to-end story needs.

    def install(self) -> testing.State:
        """Run ``install``."""
        return self.run(lambda on, _: on.install())

    def leader_elected(self) -> testing.State:
        """Run ``leader-elected``."""
        return self.run(lambda on, _: on.leader_elected())

    def config_changed(self) -> testing.State:
        """Run ``config-changed``."""
        return self.run(lambda on, _: on.config_changed())

    def start(self) -> testing.State:
        """Run ``start``."""
        return self.run(lambda on, _: on.start())

    def update_status(self) -> testing.State:
        """Run ``update-status``."""
        return self.run(lambda on, _: on.update_status())

    def pebble_ready(self) -> testing.State:
        """Run ``<container>-pebble-ready`` (the container must be able to connect)."""
        name = self.app.container_name
        return self.run(lambda on, st: on.pebble_ready(st.get_container(name)))

    def relation_created(self, relation_id: int) -> testing.State:
        """Run ``<endpoint>-relation-created``."""
        return self.run(lambda on, st: on.relation_created(st.get_relation(relation_id)))

    def relation_joined(self, relation_id: int, remote_unit: int) -> testing.State:
        """Run ``<endpoint>-relation-joined`` for a remote (or peer) unit."""
        return self.run(
            lambda on, st: on.relation_joined(
                st.get_relation(relation_id), remote_unit=remote_unit
            )
        )

    def relation_changed(self, relation_id: int, remote_unit: int | None = None) -> testing.State:
        """Run ``<endpoint>-relation-changed`` (``remote_unit`` None: the remote app changed)."""
        return self.run(
            lambda on, st: on.relation_changed(
                st.get_relation(relation_id), remote_unit=remote_unit
            )
        )

    def relation_departed(
        self,
        relation_id: int,
        remote_unit: int,
        departing_unit: int | None = None,
        *,
        departing: str | None = None,
    ) -> testing.State:
        """Run ``<endpoint>-relation-departed``.

        Args:
            relation_id: the relation.
            remote_unit: the remote unit whose departure is reported (``JUJU_REMOTE_UNIT``).
            departing_unit: id of the departing unit of the remote application; defaults to
                ``remote_unit``.
            departing: the departing unit's full name, for any application (``pgbouncer-k8s/1``
                when this unit itself leaves); overrides ``departing_unit``.
        """
        unit_id = remote_unit if departing_unit is None else departing_unit
        env = {"JUJU_DEPARTING_UNIT": departing} if departing else None
        return self.run(
            lambda on, st: on.relation_departed(
                st.get_relation(relation_id), remote_unit=remote_unit, departing_unit=unit_id
            ),
            env=env,
        )

    def relation_broken(self, relation_id: int) -> testing.State:
        """Run ``<endpoint>-relation-broken``."""
        return self.run(lambda on, st: on.relation_broken(st.get_relation(relation_id)))

    def secret_changed(self, secret_id: str) -> testing.State:
        """Run ``secret-changed`` for a secret this unit observes."""
        return self.run(lambda on, st: on.secret_changed(st.get_secret(id=secret_id)))


class Application:
    """An application of ``num_units`` units of one charm class, unit 0 the leader.

    Args:
        charm_type: the ``ops.CharmBase`` subclass.
        name: the application name.
        num_units: how many units.
        meta: charm metadata (a ``charmcraft.yaml``-style dict); None lets Scenario read the
            ``charmcraft.yaml`` at the charm's root (the parent of the module's ``src/``).
        config: the application's config values (shared by every unit).
        container_name: the workload container.
        mount_location: the container path backed by a real directory per unit.
        peer_endpoint: the peer endpoint; None for none.
        execs: ``testing.Exec`` answers for the container; default: ``pgbouncer --version``
            and the image contract check, answered with our real binary's output.
        processes: ids of the units whose Pebble services run as real processes.
        process_ready: text a started service logs once it serves (PgBouncer: ``process up``).
        pod_network: give each unit with processes its own network namespace (see above).
        reach: host ports (PostgreSQL servers) every pod network can reach at ``127.0.0.1``, or
            ``(address, port)`` for a server on another loopback address.
        juju_version: the Juju version Scenario pretends to be.
        charm_dirs: keep each unit's charm directory between its hooks, as Juju does (the
            settled record and the backend-check marker live there); without it every hook
            gets a fresh one, as ``ops.testing`` gives by default.
        model: the model (shared by every unit).
    """

    def __init__(
        self,
        charm_type: type,
        *,
        name: str = "pgbouncer-k8s",
        num_units: int = 2,
        meta: Mapping[str, Any] | None = None,
        config: Mapping[str, Any] | None = None,
        container_name: str = "pgbouncer",
        mount_location: str = CONTAINER_PATH,
        peer_endpoint: str | None = "pgb-peers",
        execs: Iterable[testing.Exec] | None = None,
        processes: Iterable[int] = (0,),
        process_ready: str | None = "process up",
        pod_network: bool = False,
        reach: Iterable[int | tuple[str, int]] = (),
        juju_version: str = DEFAULT_JUJU_VERSION,
        model: testing.Model | None = None,
        charm_dirs: bool = False,
    ):
        self.charm_type = charm_type
        self.name = name
        self.container_name = container_name
        self.mount_location = mount_location
        self.peer_endpoint = peer_endpoint
        self.process_ready = process_ready
        self.model = model or testing.Model(name="pgbk8s-e2e")
        self.config = dict(config or {})
        self.units: list[Unit] = []
        self._app_secrets: dict[str, testing.Secret] = {}
        self._meta = dict(meta) if meta is not None else None
        execs = set(execs) if execs is not None else {image_check_exec()}
        peer = testing.PeerRelation(peer_endpoint) if peer_endpoint else None
        process_units = set(processes)
        self._reach = [(LOOPBACK, r) if isinstance(r, int) else r for r in reach]
        try:
            for unit_id in range(num_units):
                mount_dir = service_tempdir(f"pgbk8s-unit{unit_id}-")
                mount_dir.chmod(0o755)
                container = testing.Container(
                    container_name,
                    can_connect=True,
                    mounts={"data": testing.Mount(location=mount_location, source=mount_dir)},
                    execs=execs,
                )
                relations = set()
                if peer is not None:
                    others = {i: {} for i in range(num_units) if i != unit_id}
                    relations.add(dataclasses.replace(peer, peers_data=others))
                state = testing.State(
                    leader=unit_id == 0,
                    planned_units=num_units,
                    config=self.config,
                    containers={container},
                    relations=relations,
                    model=self.model,
                )
                charm_dir = (
                    Path(tempfile.mkdtemp(prefix=f"pgbk8s-charm{unit_id}-"))
                    if charm_dirs
                    else None
                )
                ctx = testing.Context(
                    charm_type,
                    meta=self._meta,
                    app_name=name,
                    unit_id=unit_id,
                    juju_version=juju_version,
                    charm_root=charm_dir,
                )
                network = None
                runner = None
                if unit_id in process_units:
                    if pod_network:
                        network = PodNetwork()
                        for address, port in self._reach:
                            network.reach(port, address)
                    runner = PebbleProcessRunner(
                        {mount_location: mount_dir},
                        enter_argv=network.enter_argv() if network else (),
                    )
                unit = Unit(self, unit_id, ctx, state, mount_dir, runner, network, charm_dir)
                self.units.append(unit)
        except BaseException:
            self.close()
            raise

    @property
    def leader(self) -> Unit:
        """The unit whose state says it leads."""
        return next(u for u in self.units if u.is_leader)

    @property
    def peer_relation_id(self) -> int:
        """Id of the peer relation (the same in every unit's state)."""
        if not self.peer_endpoint:
            raise LookupError("no peer endpoint")
        return self.units[0].state.get_relations(self.peer_endpoint)[0].id

    def __enter__(self) -> Application:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every unit's processes and remove every unit's directory."""
        for unit in self.units:
            if unit.runner is not None:
                unit.runner.close()
            if unit.network is not None:
                unit.network.close()
            shutil.rmtree(unit.mount_dir, ignore_errors=True)
            if unit.charm_dir is not None:
                shutil.rmtree(unit.charm_dir, ignore_errors=True)

    def set_planned_units(self, count: int) -> None:
        """What ``app.planned_units()`` answers on every unit (Juju's scale target)."""
        self._each(lambda st: dataclasses.replace(st, planned_units=count))

    def remove_unit(self, unit_id: int) -> None:
        """The unit's pod is gone: stop its processes, forget it, drop it from the peer data."""
        unit = next(u for u in self.units if u.unit_id == unit_id)
        if unit.runner is not None:
            unit.runner.close()
            unit.runner = None
        if unit.network is not None:
            unit.network.close()
            unit.network = None
        self.units.remove(unit)
        shutil.rmtree(unit.mount_dir, ignore_errors=True)
        if not self.peer_endpoint:
            return

        def change(st: testing.State) -> testing.State:
            rels = {
                dataclasses.replace(
                    r, peers_data={k: v for k, v in r.peers_data.items() if k != unit_id}
                )
                if isinstance(r, testing.PeerRelation)
                else r
                for r in st.relations
            }
            return dataclasses.replace(st, relations=rels)

        self._each(change)

    def reach(self, host_port: int, address: str = LOOPBACK) -> None:
        """Make one more host port (a new PostgreSQL server) reachable from every pod."""
        self._reach.append((address, host_port))
        for unit in self.units:
            if unit.network is not None:
                unit.network.reach(host_port, address)

    # -- changing the world between hooks ---------------------------------------------------

    def _each(self, change: Callable[[testing.State], testing.State]) -> None:
        for unit in self.units:
            unit.state = change(unit.state)

    def set_config(self, **values: Any) -> None:
        """Change config values on every unit (then run ``config_changed`` where wanted)."""
        self.config.update(values)
        self._each(lambda st: dataclasses.replace(st, config=dict(self.config)))

    def set_leader(self, unit_id: int) -> None:
        """Make ``unit_id`` the leader and every other unit a follower."""
        for unit in self.units:
            unit.state = dataclasses.replace(unit.state, leader=unit.unit_id == unit_id)

    def add_relation(self, relation: testing.Relation) -> int:
        """Add a non-peer relation (same id, same remote data) to every unit; its id."""
        self._each(lambda st: dataclasses.replace(st, relations={*st.relations, relation}))
        return relation.id

    def remove_relation(self, relation_id: int) -> None:
        """Take a relation away from every unit (after its ``relation-broken``)."""
        self._each(
            lambda st: dataclasses.replace(
                st, relations={r for r in st.relations if r.id != relation_id}
            )
        )

    def set_remote(
        self,
        relation_id: int,
        *,
        remote_app_data: Mapping[str, str] | None = None,
        remote_units_data: Mapping[int, Mapping[str, str]] | None = None,
    ) -> None:
        """Replace what the remote application (and its units) published, for every unit."""
        changes: dict[str, Any] = {}
        if remote_app_data is not None:
            changes["remote_app_data"] = dict(remote_app_data)
        if remote_units_data is not None:
            changes["remote_units_data"] = {k: dict(v) for k, v in remote_units_data.items()}

        def change(st: testing.State) -> testing.State:
            rels = {
                dataclasses.replace(r, **changes) if r.id == relation_id else r
                for r in st.relations
            }
            return dataclasses.replace(st, relations=rels)

        self._each(change)

    def add_secret(self, secret: testing.Secret) -> None:
        """Make another application's secret (``owner=None``) visible to every unit."""

        def change(st: testing.State) -> testing.State:
            kept = {s for s in st.secrets if s.id != secret.id}
            return dataclasses.replace(st, secrets={*kept, copy.copy(secret)})

        self._each(change)

    def relation_data(self, relation_id: int) -> dict[str, str]:
        """The leader's current application databag for a relation (what the remote side sees)."""
        return dict(self.leader.relation(relation_id).local_app_data)

    # -- keeping the units in step ----------------------------------------------------------

    def _propagate(self, source: Unit, before: testing.State) -> None:
        """Copy what ``source`` just wrote that other units see into their states."""
        out = source.state
        peer = None
        if self.peer_endpoint:
            peers = out.get_relations(self.peer_endpoint)
            peer = peers[0] if peers else None
        shared = {
            r.id: r.local_app_data
            for r in out.relations
            if not isinstance(r, testing.PeerRelation)
        }
        if source.is_leader:
            before_ids = {s.id for s in before.secrets if s.owner == "app"}
            now = {s.id: s for s in out.secrets if s.owner == "app"}
            for gone in before_ids - set(now):
                self._app_secrets.pop(gone, None)
            self._app_secrets.update(now)
        for unit in self.units:
            if unit is source:
                continue
            st = unit.state
            relations = set()
            for rel in st.relations:
                if (
                    peer is not None
                    and isinstance(rel, testing.PeerRelation)
                    and rel.id == peer.id
                ):
                    peers_data = dict(rel.peers_data)
                    peers_data[source.unit_id] = dict(peer.local_unit_data)
                    rel = dataclasses.replace(
                        rel, local_app_data=dict(peer.local_app_data), peers_data=peers_data
                    )
                elif source.is_leader and rel.id in shared:
                    rel = dataclasses.replace(rel, local_app_data=dict(shared[rel.id]))
                relations.add(rel)
            secrets = {s for s in st.secrets if s.owner != "app"}
            for secret_id, leader_copy in self._app_secrets.items():
                secrets.add(_follower_view(leader_copy, st, secret_id))
            unit.state = dataclasses.replace(st, relations=relations, secrets=secrets)


def _follower_view(
    leader_copy: testing.Secret, st: testing.State, secret_id: str
) -> testing.Secret:
    """The leader's app secret as another unit sees it: latest revision, its own tracked one."""
    view = copy.copy(leader_copy)
    mine = next((s for s in st.secrets if s.id == secret_id), None)
    if mine is None:
        object.__setattr__(view, "tracked_content", dict(leader_copy.latest_content))
        object.__setattr__(view, "_tracked_revision", leader_copy._latest_revision)
    else:
        object.__setattr__(view, "tracked_content", dict(mine.tracked_content))
        object.__setattr__(view, "_tracked_revision", mine._tracked_revision)
    return view
