"""The workload plan is pure and idempotent: planning again after a plan changes nothing.

:func:`pgbouncer.plan.plan_apply` is run here without Pebble: a sequence of configuration
changes (pool mode, port, process count, a no-reload key, databases), each planned from the
snapshot the previous plan leaves (:meth:`ContainerSnapshot.after`), with drain policies drawn at
random. After every plan, the invariants of a unit's processes are checked on that snapshot, and
the same request planned again must take no step that changes anything.
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from pgbouncer.config import (
    AUTH_FILE,
    DatabaseTarget,
    PgBouncerConfig,
    render_files,
)
from pgbouncer.plan import ContainerSnapshot, DrainPolicy, listen_port_of, plan_apply
from pgbouncer.slots import DRAINING_SUFFIX, SLOTS, service_index, service_name, slot_ini

CHANGING = {"write", "remove", "stop", "add_layer", "start", "restart", "signal", "reload"}


def _config(processes: int, port: int, mode: str, pidfile: bool, extra: bool) -> PgBouncerConfig:
    databases = [DatabaseTarget("appdb", "10.0.0.1", 5432, "appdb")]
    if extra:
        databases.append(DatabaseTarget("otherdb", "10.0.0.1", 5432, "otherdb"))
    return PgBouncerConfig(
        listen_port=port,
        pool_mode=mode,
        max_db_connections=0,
        max_prepared_statements=100 if not pidfile else 101,
        processes=processes,
        databases=tuple(databases),
    )


def _files(c: PgBouncerConfig) -> dict[str, str | None]:
    return {**render_files(c), AUTH_FILE: ""}


changes = st.lists(
    st.tuples(
        st.integers(1, 4),  # processes
        st.sampled_from([6432, 7432]),  # port
        st.sampled_from(["session", "transaction"]),  # pool mode
        st.booleans(),  # a reload-only change
        st.booleans(),  # an extra database
        st.builds(DrainPolicy, st.booleans(), st.booleans(), st.booleans()),
    ),
    min_size=1,
    max_size=8,
)


def _check_invariants(snap: ContainerSnapshot, processes: int, port: int) -> None:
    serving = snap.serving()
    # Every wanted process index serves from exactly one slot, enabled and running, whose ini
    # is the wanted one (on the wanted port).
    assert sorted(serving) == list(range(processes))
    for index, name in serving.items():
        assert listen_port_of(snap.files.get(slot_ini(name))) == port
        others = [service_name(index, k) for k in range(SLOTS)]
        enabled = [n for n in others if n in snap.enabled]
        assert enabled == [name], enabled
    # A running slot that does not serve drains: it keeps its file (in place or moved aside).
    for name in snap.running:
        index = service_index(name)
        if index is None or name in serving.values():
            continue
        path = slot_ini(name)
        assert path in snap.files or path + DRAINING_SUFFIX in snap.files, name
    # No moved-aside file of a slot that does not run.
    for path in snap.files:
        if path.endswith(DRAINING_SUFFIX):
            names = [n for n in snap.running if slot_ini(n) + DRAINING_SUFFIX == path]
            assert names, path


@settings(max_examples=150, deadline=None)
@given(changes)
def test_planning_again_after_a_plan_changes_nothing(sequence):
    snap = ContainerSnapshot()
    for processes, port, mode, reload_only, extra, policy in sequence:
        files = _files(_config(processes, port, mode, reload_only, extra))
        plan = plan_apply(snap, files, processes, policy)
        snap = snap.after(plan)
        _check_invariants(snap, processes, port)
        # Planned again at once: no drain is due yet (the clocks just started).
        not_due = replace(policy, drain_old=False, drain_same_port=False)
        again = plan_apply(snap, files, processes, not_due)
        changing = [step for step in again.steps if step[0] in CHANGING]
        assert changing == [], changing
        assert not again.result.changed


def test_a_plan_reads_nothing_and_the_same_inputs_give_the_same_plan():
    files = _files(_config(2, 6432, "transaction", False, False))
    first = plan_apply(ContainerSnapshot(), files, 2)
    second = plan_apply(ContainerSnapshot(), files, 2)
    assert first == second
    kinds = [step[0] for step in first.steps]
    assert kinds.index("write") < kinds.index("add_layer") < kinds.index("start")
    assert first.result.started == ("pgbouncer_0", "pgbouncer_1")


def test_a_pool_mode_change_hands_over_and_the_old_slot_gets_sigterm_after_the_new_starts():
    before = _files(_config(1, 6432, "transaction", False, False))
    snap = ContainerSnapshot()
    snap = snap.after(plan_apply(snap, before, 1))
    after = _files(_config(1, 6432, "session", False, False))
    plan = plan_apply(snap, after, 1)
    kinds = [step[0] for step in plan.steps]
    assert kinds.index("start") < kinds.index("signal")
    assert ("signal", "SIGTERM", ("pgbouncer_0",)) in plan.steps
    assert plan.result.handed_over == ("pgbouncer_0 -> pgbouncer_0_twin",)
    assert plan.result.handover_kinds == ("pool_mode",)
    moved = snap.after(plan)
    assert slot_ini("pgbouncer_0") + DRAINING_SUFFIX in moved.files
    assert slot_ini("pgbouncer_0") not in moved.files


def test_without_a_free_slot_or_on_an_older_pgbouncer_the_pool_mode_changes_in_place():
    before = _files(_config(1, 6432, "transaction", False, False))
    snap = ContainerSnapshot()
    snap = snap.after(plan_apply(snap, before, 1))
    after = _files(_config(1, 6432, "session", False, False))
    plan = plan_apply(snap, after, 1, DrainPolicy(wait_for_clients=False))
    assert ("restart", "pgbouncer_0") in plan.steps
    assert not plan.result.handed_over


def _listing(snap: ContainerSnapshot, modes: dict[str, str]) -> tuple[tuple[str, ...], ...]:
    """The base directory's listing as Workload.observe gives it, with the modes drawn."""
    base = snap.base_dir.rstrip("/") + "/"
    return tuple(
        (path.removeprefix(base), "file", str(len(text)), modes.get(path, "600"), "t", "0", "0")
        for path, text in snap.files.items()
    )


@settings(max_examples=100, deadline=None)
@given(changes, st.data())
def test_a_file_whose_mode_drifted_is_rewritten_and_nothing_else_restarts(sequence, data):
    snap = ContainerSnapshot()
    files: dict[str, str | None] = {}
    processes = 1
    for processes, port, mode, reload_only, extra, policy in sequence:
        files = _files(_config(processes, port, mode, reload_only, extra))
        snap = snap.after(plan_apply(snap, files, processes, policy))
    drifted = data.draw(st.sets(st.sampled_from(sorted(snap.files))), label="drifted")
    modes = {p: data.draw(st.sampled_from(["644", "640", "666", "400"])) for p in drifted}
    seen = replace(snap, listing=_listing(snap, modes))
    assert seen.loose_files() == frozenset(drifted)
    not_due = DrainPolicy(drain_old=False, drain_same_port=False, wait_for_clients=True)
    plan = plan_apply(seen, files, processes, not_due)
    written = {step[1] for step in plan.steps if step[0] == "write"}
    slot_files = {slot_ini(service_name(i, k)) for i in range(4) for k in range(SLOTS)}
    serving_files = {slot_ini(name) for name in seen.serving().values()}
    wanted = {p for p, text in files.items() if text is not None}
    wanted -= slot_files - serving_files
    # Every file the charm wants whose mode drifted is written again (its mode with it); a file
    # it does not want (a draining slot's) is left as it is; nothing is stopped or restarted.
    assert written == drifted & wanted
    assert not [s for s in plan.steps if s[0] in ("stop", "start", "restart", "remove")]
    again = replace(seen.after(plan), listing=_listing(seen.after(plan), {}))
    assert [
        s for s in plan_apply(again, files, processes, not_due).steps if s[0] in CHANGING
    ] == []
