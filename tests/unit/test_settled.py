"""The settled record (src/settled.py): a hook that can change nothing ends before the reconcile.

The invariant: a hook ends on the record only when nothing it could act on differs from what the
last clean reconcile saw; every way of making something differ (each input Juju delivers with a
hook, each change to the container, time, leadership, a record that is not ours) runs the whole
reconcile, which puts the container back. And a hook that ends on the record writes nothing and
sets no status. These tests run the charm under ``ops.testing`` with a charm directory kept
between hooks, as Juju keeps it; the backend is the fake of ``conftest``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import ops
import pytest
from hypothesis import given
from hypothesis import strategies as st
from ops import testing

import settled
from charm import PgBouncerK8sCharm
from pgbouncer.plan import ServiceInfo
from postgres.connection import BackendUnreachable
from postgres.verification import MARKER
from reconcile import LeaderOutcome
from settled import Glance, SettledRecord, unsettled_reason
from status import UnitOutcome, settles
from tests.unit.conftest import AUTH_PASSWORD, Effects, charm_with
from tests.unit.test_client_database import (  # noqa: F401 (fake_clients is a fixture)
    V0_REQUEST,
    client_relation,
    fake_clients,
    state_with,
)

ACTIVE = testing.ActiveStatus("1 PgBouncer process")


# -- the decision, pure -----------------------------------------------------------------------
RECORD = SettledRecord(
    at=1_000_000.0,
    leader=True,
    config="c" * 32,
    clients={3: "r" * 32},
    container="g" * 32,
    until=1_000_000.0 + 600,  # a certificate expires 10 minutes after the record
)
SAME = {"now": RECORD.at + 60, "leader": True, "container": RECORD.container}


@pytest.mark.parametrize(
    ("hook", "extra"),
    [
        (settled.UPDATE_STATUS, {}),
        (settled.CONFIG_CHANGED, {"config": RECORD.config}),
        (settled.CLIENT_CHANGED, {"client": (3, "r" * 32)}),
    ],
)
def test_a_hook_about_nothing_new_may_end_on_the_record(hook, extra):
    assert unsettled_reason(RECORD, hook, **SAME, **extra) is None


@pytest.mark.parametrize(
    ("hook", "change", "reason"),
    [
        (settled.UPDATE_STATUS, {"now": RECORD.at + settled.SETTLED_FOR_S}, "too old"),
        (settled.UPDATE_STATUS, {"now": RECORD.until}, "too old"),  # a certificate expired
        (settled.UPDATE_STATUS, {"now": RECORD.at - 1}, "too old"),  # a clock set back
        (settled.UPDATE_STATUS, {"leader": False}, "leadership"),
        (settled.UPDATE_STATUS, {"container": "x" * 32}, "container"),
        (settled.UPDATE_STATUS, {"container": None}, "container"),  # unreadable
        (settled.CONFIG_CHANGED, {"config": "d" * 32}, "configuration"),
        (settled.CONFIG_CHANGED, {"config": None}, "configuration"),
        (settled.CLIENT_CHANGED, {"client": (3, "s" * 32)}, "databag"),
        (settled.CLIENT_CHANGED, {"client": (4, "r" * 32)}, "databag"),  # a new relation
        (settled.CLIENT_CHANGED, {"client": None}, "databag"),
        ("secret-changed", {}, "not a settled hook"),
        ("leader-elected", {}, "not a settled hook"),
    ],
)
def test_anything_different_reconciles_in_full(hook, change, reason):
    args = {**SAME, "config": RECORD.config, "client": (3, "r" * 32), **change}
    assert reason in (unsettled_reason(RECORD, hook, **args) or "")


def test_a_record_holds_until_the_first_certificate_expires():
    assert settled.settled_until(100.0, []) == 100.0 + settled.SETTLED_FOR_S
    assert settled.settled_until(100.0, [700.0, 400.0]) == 400.0
    assert settled.settled_until(100.0, [1e12]) == 100.0 + settled.SETTLED_FOR_S


def test_no_record_reconciles_in_full():
    assert unsettled_reason(None, settled.UPDATE_STATUS, **SAME) == "no record"


CLEAN_UNIT = UnitOutcome(processes=1, running=True)


@pytest.mark.parametrize(
    ("statuses", "unit_outcome", "leader", "notes"),
    [
        ([ops.WaitingStatus("w"), ops.ActiveStatus("a")], CLEAN_UNIT, LeaderOutcome(), ()),
        ([ops.BlockedStatus("b")], CLEAN_UNIT, LeaderOutcome(), ()),
        ([ops.ActiveStatus("a")], CLEAN_UNIT, LeaderOutcome(), ("rotating",)),
        ([ops.ActiveStatus("a")], CLEAN_UNIT, LeaderOutcome(repaired=["x"]), ()),
        ([ops.ActiveStatus("a")], CLEAN_UNIT, LeaderOutcome(tenancy_repaired=["x"]), ()),
        ([ops.ActiveStatus("a")], dataclasses.replace(CLEAN_UNIT, running=False), LeaderOutcome(), ()),
        ([ops.ActiveStatus("a")], dataclasses.replace(CLEAN_UNIT, draining_port=6432), LeaderOutcome(), ()),
        ([ops.ActiveStatus("a")], dataclasses.replace(CLEAN_UNIT, handover_reason="restart"), LeaderOutcome(), ()),
        ([ops.ActiveStatus("a")], dataclasses.replace(CLEAN_UNIT, paused=True), LeaderOutcome(), ()),
        ([ops.ActiveStatus("a")], dataclasses.replace(CLEAN_UNIT, paused_databases=("db",)), LeaderOutcome(), ()),
    ],
)  # fmt: skip
def test_only_a_clean_ending_settles(statuses, unit_outcome, leader, notes):
    assert settles([ops.ActiveStatus("a")], CLEAN_UNIT, LeaderOutcome())
    assert not settles(statuses, unit_outcome, leader, notes)


def test_the_record_reads_back():
    assert SettledRecord.from_text(RECORD.to_text()) == RECORD


@given(st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_garbage_is_no_record(text):
    record = SettledRecord.from_text(text)
    assert record is None or record == SettledRecord.from_text(record.to_text())


@given(
    st.dictionaries(
        st.sampled_from(
            ["format", "at", "leader", "config", "clients", "container", "until", "x"]
        ),
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False)
        | st.text(max_size=5)
        | st.dictionaries(st.text(max_size=3), st.text(max_size=3) | st.integers(), max_size=3),
    )
)
def test_a_record_of_the_wrong_shape_is_no_record(fields):
    # Whatever the file holds, it is a record only with every field of the right type.
    record = SettledRecord.from_text(json.dumps(fields))
    if record is not None:
        assert fields["format"] == settled.FORMAT and not isinstance(fields["at"], bool)
        assert not isinstance(fields["until"], bool)
        assert isinstance(fields["leader"], bool) and isinstance(fields["container"], str)
        assert all(k.isdigit() for k in fields["clients"])


def test_the_glance_ignores_order_but_not_content():
    rows = [
        ("a.ini", "file", "10", "600", "t1", "0", "0"),
        ("b", "file", "3", "600", "t", "0", "0"),
    ]
    services = {"s1": ServiceInfo("active", "enabled"), "s0": ServiceInfo("inactive", "disabled")}
    one = Glance.of(rows, services).digest()
    assert Glance.of(list(reversed(rows)), dict(reversed(services.items()))).digest() == one
    for i in range(2, 7):  # size, permissions, time, owner, group: each one counts
        changed = [tuple(v if j != i else v + "x" for j, v in enumerate(rows[0])), rows[1]]
        assert Glance.of(changed, services).digest() != one
    assert Glance.of(rows, {**services, "s1": ServiceInfo("backoff", "enabled")}).digest() != one


def test_an_unwritable_charm_directory_keeps_no_record(tmp_path):
    settled.write(tmp_path / "absent" / "dir", RECORD)  # no exception: every hook is whole
    assert settled.read(tmp_path / "absent" / "dir") is None


# -- the charm, with its charm directory kept between hooks ------------------------------------
@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """How often the hook read the world (the real method runs; it is only counted)."""
    counter: Counter = Counter()
    real = PgBouncerK8sCharm._read_world

    def counted(self):
        counter["read"] += 1
        return real(self)

    monkeypatch.setattr(PgBouncerK8sCharm, "_read_world", counted)
    return counter


@dataclasses.dataclass
class Unit:
    """One unit: its Context (with its charm directory), its state and its files."""

    ctx: testing.Context
    state: testing.State
    charm_dir: Path
    pgb: Path

    def run(self, event: Callable[[testing.Context, testing.State], object]) -> testing.State:
        self.state = self.ctx.run(event(self.ctx, self.state), self.state)  # type: ignore[arg-type]
        return self.state

    def update_status(self) -> testing.State:
        return self.run(lambda ctx, _: ctx.on.update_status())

    def record(self) -> SettledRecord | None:
        return settled.read(self.charm_dir)

    def files(self) -> dict[str, tuple[bytes, int, int]]:
        out = {}
        for path in sorted(p for p in self.pgb.iterdir() if p.is_file()):
            st_ = path.stat()
            out[path.name] = (path.read_bytes(), st_.st_mode, st_.st_mtime_ns)
        return out


@pytest.fixture
def unit(tmp_path, dirs, effects: Effects, fake_sql, fake_clients) -> Unit:  # noqa: F811
    """A leader with one client answered, settled: its last update-status wrote the record."""
    charm_dir = tmp_path / "charm"
    charm_dir.mkdir()
    ctx = testing.Context(charm_with(effects), charm_root=charm_dir)
    u = Unit(ctx, state_with(client_relation(V0_REQUEST), dirs=dirs), charm_dir, dirs.pgb)
    for _ in range(3):
        u.update_status()
        if u.record() is not None:
            break
    assert u.state.unit_status == ACTIVE
    assert u.record() is not None
    return u


def _client(state: testing.State) -> testing.Relation:
    return next(r for r in state.relations if r.endpoint == "database")  # type: ignore[return-value]


def test_a_settled_update_status_reads_nothing_writes_nothing_sets_no_status(unit, reads):
    files = unit.files()
    before = unit.state
    out = unit.run(lambda ctx, st_: ctx.on.update_status())  # the status it had is not set again
    assert reads == Counter()
    assert unit.files() == files
    assert out.unit_status == before.unit_status
    assert {r.id: dict(r.local_app_data) for r in out.relations} == {
        r.id: dict(r.local_app_data) for r in before.relations
    }


def test_the_record_is_private_and_holds_no_secret(unit):
    path = unit.charm_dir / settled.RECORD_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    text = path.read_text()
    secrets = [AUTH_PASSWORD]
    for secret in unit.state.secrets:
        secrets += [v for v in (secret.latest_content or {}).values() if len(v) >= 8]
    assert len(secrets) > 1  # the client's password and the stats user's are among them
    for value in secrets:
        assert value not in text


def _edit_same_size(unit: Unit) -> None:
    ini = unit.pgb / "pgbouncer_0.ini"
    text = ini.read_text()
    ini.write_text(text.replace("pool_mode = session", "pool_mode = sessioX"))
    assert len(ini.read_text()) == len(text) and ini.read_text() != text
    later = time.time() + 5  # Pebble lists times to the second: a later second
    os.utime(ini, (later, later))


def _remove_auth_file(unit: Unit) -> None:
    (unit.pgb / "userlist.txt").unlink()


def _add_a_file(unit: Unit) -> None:
    (unit.pgb / "stray.ini").write_text("[databases]\n")


def _chmod_auth_file(unit: Unit) -> None:
    (unit.pgb / "userlist.txt").chmod(0o644)


def _stop_service(unit: Unit) -> None:
    container = next(iter(unit.state.containers))
    statuses = dict.fromkeys(container.service_statuses, testing.pebble.ServiceStatus.INACTIVE)
    changed = dataclasses.replace(container, service_statuses=statuses)
    unit.state = dataclasses.replace(unit.state, containers={changed})


def _lose_leadership(unit: Unit) -> None:
    unit.state = dataclasses.replace(unit.state, leader=False)


def _age_the_record(unit: Unit) -> None:
    record = unit.record()
    assert record is not None
    settled.write(
        unit.charm_dir, dataclasses.replace(record, at=record.at - settled.SETTLED_FOR_S - 1)
    )


def _garble_the_record(unit: Unit) -> None:
    (unit.charm_dir / settled.RECORD_FILE).write_text('{"format": 1, "at": "soon"}')


def _make_the_backend_check_due(unit: Unit) -> None:
    (unit.charm_dir / MARKER).unlink()


@pytest.mark.parametrize(
    "change",
    [
        _edit_same_size,
        _remove_auth_file,
        _add_a_file,
        _chmod_auth_file,
        _stop_service,
        _lose_leadership,
        _age_the_record,
        _garble_the_record,
        _make_the_backend_check_due,
    ],
)
def test_any_change_runs_the_whole_reconcile(unit, reads, change):
    rendered = (unit.pgb / "pgbouncer_0.ini").read_text(), (unit.pgb / "userlist.txt").read_text()
    change(unit)
    unit.update_status()
    assert reads == Counter({"read": 1})
    # ... which puts the container's files back as the configuration renders them, 0600.
    assert (unit.pgb / "pgbouncer_0.ini").read_text() == rendered[0]
    assert (unit.pgb / "userlist.txt").read_text() == rendered[1]
    for name in ("pgbouncer_0.ini", "userlist.txt"):
        assert (unit.pgb / name).stat().st_mode & 0o777 == 0o600


def test_config_changed_ends_on_the_record_only_when_the_configuration_is_the_same(unit, reads):
    unit.run(lambda ctx, _: ctx.on.config_changed())
    assert reads == Counter()
    unit.state = dataclasses.replace(unit.state, config={"server_idle_timeout": 300})
    unit.run(lambda ctx, _: ctx.on.config_changed())
    assert reads == Counter({"read": 1})
    assert "server_idle_timeout = 300" in (unit.pgb / "pgbouncer_0.ini").read_text()
    record = unit.record()  # the new configuration's, so the next config-changed ends on it
    assert record is not None
    unit.run(lambda ctx, _: ctx.on.config_changed())
    assert reads == Counter({"read": 1})


def test_a_client_relation_changed_ends_on_the_record_only_when_its_databag_is_the_same(
    unit,
    reads,
    fake_clients,  # noqa: F811
):
    rel = _client(unit.state)
    unit.run(lambda ctx, st_: ctx.on.relation_changed(_client(st_), remote_unit=0))
    assert reads == Counter()
    assert fake_clients.created == [] or len(fake_clients.created) == 1
    created = len(fake_clients.created)
    moved = dataclasses.replace(rel, remote_app_data={**V0_REQUEST, "database": "otherdb"})
    unit.state = dataclasses.replace(
        unit.state, relations={*(r for r in unit.state.relations if r.id != rel.id), moved}
    )
    unit.run(lambda ctx, st_: ctx.on.relation_changed(_client(st_), remote_unit=0))
    assert reads == Counter({"read": 1})
    assert len(fake_clients.created) == created + 1
    assert fake_clients.created[-1]["database"] == "otherdb"


@pytest.mark.parametrize(
    "event",
    [
        lambda ctx, st_: ctx.on.leader_elected(),
        lambda ctx, st_: ctx.on.relation_changed(
            next(r for r in st_.relations if r.endpoint == "pgb-peers"), remote_unit=1
        ),
        lambda ctx, st_: ctx.on.pebble_ready(next(iter(st_.containers))),
        lambda ctx, st_: ctx.on.upgrade_charm(),
    ],
    ids=["leader-elected", "peer relation-changed", "pebble-ready", "upgrade-charm"],
)
def test_other_hooks_always_reconcile(unit, reads, event):
    unit.run(event)
    assert reads == Counter({"read": 1})


def test_an_unclean_ending_removes_the_record(unit, reads):
    unit.state = dataclasses.replace(unit.state, config={"pool_mode": "no-such-mode"})
    out = unit.run(lambda ctx, _: ctx.on.config_changed())
    assert out.unit_status.name == "blocked"
    assert unit.record() is None
    # ... so the next update-status is whole again, and tells the same.
    unit.update_status()
    assert reads == Counter({"read": 2})
    assert unit.state.unit_status.name == "blocked"


def test_a_failed_backend_check_removes_the_record(unit, reads, fake_sql):
    # PostgreSQL down at the leader's check: the real check_auth returns the connection error,
    # and the repair's first statement raises it.
    def refused(*args, **kwargs):
        raise BackendUnreachable("connection to the backend refused")

    fake_sql.broken = ["connection to the backend refused"]
    fake_sql.remove_leftovers = refused  # type: ignore[method-assign]
    (unit.charm_dir / MARKER).unlink()
    out = unit.update_status()
    assert out.unit_status.name == "waiting"
    assert unit.record() is None
    del fake_sql.remove_leftovers  # back: the leader checks again at once (it failed last time)
    unit.update_status()
    assert reads == Counter({"read": 2})
    assert unit.state.unit_status == ACTIVE
    assert unit.record() is not None


def test_a_repair_is_told_once_then_the_unit_settles(unit, reads, fake_sql):
    fake_sql.broken = ["the lookup fails: function missing"]
    (unit.charm_dir / MARKER).unlink()
    out = unit.update_status()
    assert "repaired the auth plumbing" in out.unit_status.message
    assert unit.record() is None  # the message moves on by itself: not a settled state
    unit.update_status()
    assert unit.state.unit_status == ACTIVE
    assert unit.record() is not None
    unit.update_status()
    assert reads == Counter({"read": 2})


def test_a_hook_that_fails_half_way_leaves_no_record(unit, reads, fake_clients):  # noqa: F811
    fake_clients.fail = RuntimeError("a bug")  # raised while the leader serves the clients
    rel = _client(unit.state)
    moved = dataclasses.replace(rel, remote_app_data={**V0_REQUEST, "database": "otherdb"})
    unit.state = dataclasses.replace(
        unit.state, relations={*(r for r in unit.state.relations if r.id != rel.id), moved}
    )
    with pytest.raises(testing.errors.UncaughtCharmError):
        unit.run(lambda ctx, st_: ctx.on.relation_changed(_client(st_), remote_unit=0))
    assert unit.record() is None  # Juju runs the hook again; until then nothing ends early


def test_the_record_ends_when_the_served_certificate_expires(tmp_path, dirs, effects):
    import datetime

    from tests.unit.test_charm_tls import base_state, with_certificate

    charm_dir = tmp_path / "charm"
    charm_dir.mkdir()
    ctx = testing.Context(charm_with(effects), charm_root=charm_dir)
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=10)
    out, cert = with_certificate(ctx, base_state(dirs), not_after=soon)
    assert out.unit_status.name == "active", out.unit_status
    record = settled.read(charm_dir)
    assert record is not None
    assert record.until == cert.not_valid_after_utc.timestamp() < record.at + 15 * 60
