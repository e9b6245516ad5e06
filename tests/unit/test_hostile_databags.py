"""Hostile databags: every field we read from the backend and client databags, fuzzed.

Another application writes these databags (``docs/security.md``). Whatever it writes, the charm
must never raise out of a hook, must either work or say (Blocked/Waiting) which field it refuses,
and the ``pgbouncer.ini`` it renders must parse back to the intended entries, never carrying the
hostile text anywhere else. Each hostile value holds the marker :data:`MARK`, surrounded by
characters that matter to an ini file, a conninfo, SQL or JSON; a value that turns out valid (the
marker alone is a valid database name) must then land in its intended slot only.

The PostgreSQL connection is faked (``FakeBackendSQL``, ``FakeClientSQL``) at this tier;
``tests/functional/test_catalog_hygiene.py`` fuzzes the same fields against a real server.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from ops import testing

from pgbouncer.ini import parse_ini
from tests.unit.conftest import (
    SEED_PROVIDER,
    Dirs,
    Effects,
    FakeBackendSQL,
    auth_secret,
    backend_relation,
    charm_with,
    make_container,
    peer_relation,
)
from tests.unit.test_client_database import MODEL, FakeClientSQL

MARK = "evilmark"
# Characters with a meaning somewhere downstream: ini syntax, conninfo, SQL, JSON, shells, paths.
NASTY = [*";\n\r\x00\t '\"=#[]{}:,.-_\\$%é\u202e\u00a0", "a", "Z", "1", "\r\n", "$1"]
FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
BACKEND_FIELDS = (
    "endpoints",
    "read-only-endpoints",
    "username",
    "password",
    "database",
    "version",
)
SECRET_FIELDS = ("username", "password")


def hostile_values() -> st.SearchStrategy[str]:
    """A value carrying :data:`MARK` between nasty characters, or a fixed nasty shape."""
    nasty = st.lists(st.sampled_from(NASTY), max_size=4).map("".join)
    around = st.tuples(nasty, nasty).map(lambda t: f"{t[0]}{MARK}{t[1]}")
    fixed = st.sampled_from(
        [
            MARK,
            MARK.upper(),
            f"{MARK}\nauth_user = root",
            f"{MARK}:5432\n[pgbouncer]",
            f"{MARK}:99999",
            f"[{MARK}]:5432",
            f"{MARK};DROP ROLE postgres",
            f'{MARK}" "x',
            f"{MARK} = host=evil",
            f"pgbouncer_{MARK}_" + "x" * 60,
            f"{MARK}" * 700,
            json.dumps({MARK: [1, 2]}),
            f"{{{MARK}",
            f"{MARK}\x00",
            f"1.2.{MARK}",
        ]
    )
    return st.one_of(around, fixed)


@contextmanager
def mount_dirs() -> Iterator[Dirs]:
    """Fresh container directories for one example (hypothesis and ``tmp_path`` do not mix)."""
    with tempfile.TemporaryDirectory() as tmp:
        pgb, cgroup = Path(tmp, "pgb"), Path(tmp, "cgroup")
        pgb.mkdir()
        cgroup.mkdir()
        (cgroup / "cpu.max").write_text("100000 100000\n")
        yield Dirs(pgb, cgroup)


def files_text(dirs: Dirs) -> str:
    """Every file the charm wrote into the container, concatenated."""
    return "".join(
        p.read_text(errors="replace") for p in sorted(dirs.pgb.rglob("*")) if p.is_file()
    )


def endpoint_entry(endpoints: str, database: str) -> str:
    """The ``[databases]`` value a valid ``endpoints`` and ``database`` must give."""
    # Empty items of the comma list are skipped, as the charm's parser does.
    first = next(item.strip() for item in endpoints.split(",") if item.strip())
    if first.startswith("["):
        host, _, port = first[1:].partition("]")
        port = port.removeprefix(":") or "5432"
    elif ":" in first:
        host, port = first.split(":")
    else:
        host, port = first, "5432"
    return f"host={host} port={int(port)} dbname={database}"


def check_ini_shape(dirs: Dirs, baseline_keys: set[str]) -> dict[str, dict[str, str]]:
    """The ini parses, has our three sections, and no [pgbouncer] key we did not render."""
    text = (dirs.pgb / "pgbouncer_0.ini").read_text()
    assert not re.search(r"[\x00\r\x0b\x0c]", text)
    ini = parse_ini(text)
    assert set(ini) == {"databases", "peers", "pgbouncer"}
    assert set(ini["pgbouncer"]) <= baseline_keys
    return ini


@pytest.fixture(scope="module")
def baseline_keys() -> set[str]:
    """The [pgbouncer] keys of a configuration rendered from the seed's valid databag."""
    fake = FakeBackendSQL()
    with mount_dirs() as dirs:
        out = run_backend(dirs, SEED_PROVIDER, fake=fake)
        assert out.unit_status == testing.ActiveStatus("1 PgBouncer process")
        return set(parse_ini((dirs.pgb / "pgbouncer_0.ini").read_text())["pgbouncer"])


def run_backend(
    dirs: Dirs,
    remote: dict[str, str],
    secrets: frozenset[testing.Secret] = frozenset(),
    *,
    fake: FakeBackendSQL,
) -> testing.State:
    ctx = testing.Context(charm_with(Effects(auth=fake)))
    rel = backend_relation(remote=remote)
    state = testing.State(
        leader=True,
        relations={rel, peer_relation()},
        containers={make_container(dirs)},
        secrets=set(secrets),
    )
    # ctx.run raises UncaughtCharmError if the charm raises: the first property.
    return ctx.run(ctx.on.relation_changed(rel, remote_unit=0), state)


def assert_outcome(out: testing.State, dirs: Dirs, field: str, value: str, baseline: set[str]):
    """Works with the value in its slot, or says which field it refuses; no stray text."""
    status = out.unit_status
    ini = check_ini_shape(dirs, baseline)
    if status.name != "active":
        assert status.name in ("blocked", "waiting"), status
        assert field.split()[-1] in status.message or "credentials" in status.message, status
        assert ini["databases"] == {}
        assert "auth_user" not in ini["pgbouncer"]
        if MARK in value:
            assert MARK not in files_text(dirs)
        return
    assert status == testing.ActiveStatus("1 PgBouncer process")
    databases = ini["databases"]
    assert set(databases) == {"pgb_authdb"}
    if MARK not in value:
        return
    text = files_text(dirs)
    slot = field.split()[-1]
    if slot in ("password", "version", "read-only-endpoints"):
        assert MARK not in text, f"{field} must never reach PgBouncer's files"
    elif slot in ("endpoints", "database"):
        # Only the first endpoint is the primary; the others are not rendered at all.
        used = value if slot == "database" else endpoint_entry(value, "pgbouncer")
        if MARK not in used:
            assert MARK not in text
            return
        assert MARK in databases["pgb_authdb"]
        lines = [line for line in text.splitlines() if MARK in line]
        assert lines == [f"pgb_authdb = {databases['pgb_authdb']}"]
    elif slot == "username":
        auth_user = "pgbouncer_auth_" + value.replace("-", "_")
        assert ini["pgbouncer"]["auth_user"] == auth_user
        assert re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", auth_user)


@FUZZ
@given(field=st.sampled_from(BACKEND_FIELDS), value=hostile_values())
@example(field="username", value="Relation_18")
@example(field="username", value="relation_" + "x" * 50)
def test_backend_databag_field_fuzz(field: str, value: str, baseline_keys: set[str]):
    fake = FakeBackendSQL()
    remote = {**SEED_PROVIDER, "database": "pgbouncer", field: value}
    with mount_dirs() as dirs:
        out = run_backend(dirs, remote, fake=fake)
        assert_outcome(out, dirs, field, value, baseline_keys)
        if out.unit_status.name == "active" and field in ("endpoints", "database"):
            expected = endpoint_entry(remote["endpoints"], remote["database"])
            assert parse_ini((dirs.pgb / "pgbouncer_0.ini").read_text())["databases"] == {
                "pgb_authdb": expected
            }
        if out.unit_status.name != "active":
            assert fake.installed == {}, "nothing is created from a refused databag"


@FUZZ
@given(
    field=st.sampled_from(SECRET_FIELDS),
    value=hostile_values(),
    extra=st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
)
def test_secret_user_content_fuzz(field: str, value: str, extra: dict, baseline_keys: set[str]):
    content = {**extra, "username": "relation_7", "password": "p" * 40, field: value}
    creds = testing.Secret(content, owner=None, remote_grants={})
    remote = {"endpoints": "10.1.2.3:5432", "secret-user": creds.id, "database": "pgbouncer"}
    fake = FakeBackendSQL()
    with mount_dirs() as dirs:
        out = run_backend(dirs, remote, frozenset({creds}), fake=fake)
        assert_outcome(out, dirs, f"secret-user {field}", value, baseline_keys)


@FUZZ
@given(
    value=st.one_of(
        hostile_values(), st.sampled_from(["", "secret://nope", "secret:" + "x" * 400])
    )
)
def test_secret_user_id_fuzz(value: str, baseline_keys: set[str]):
    remote = {"endpoints": "10.1.2.3:5432", "secret-user": value, "database": "pgbouncer"}
    fake = FakeBackendSQL()
    with mount_dirs() as dirs:
        out = run_backend(dirs, remote, fake=fake)
        assert out.unit_status.name in ("blocked", "waiting")
        assert "secret-user" in out.unit_status.message or "credentials" in out.unit_status.message
        check_ini_shape(dirs, baseline_keys)
        assert fake.installed == {}
        assert MARK not in files_text(dirs)


@FUZZ
@given(
    data=st.one_of(hostile_values(), st.sampled_from(["[]", "null", "1", '"x"', "{"])),
    peer_databases=st.one_of(hostile_values(), st.sampled_from(["[]", "{", '{"a": 1}'])),
)
def test_damaged_json_in_our_own_databags(data: str, peer_databases: str, baseline_keys):
    """Our ``data`` field and the peer ``databases`` field, damaged, never crash a hook."""
    fake = FakeBackendSQL()
    rel = backend_relation(local={**backend_relation().local_app_data, "data": data})
    secret = auth_secret()
    peers = peer_relation(secret)
    peers = testing.PeerRelation(
        "pgb-peers",
        local_app_data={**peers.local_app_data, "databases": peer_databases},
    )
    with mount_dirs() as dirs:
        ctx = testing.Context(charm_with(Effects(auth=fake)))
        state = testing.State(
            leader=True,
            relations={rel, peers},
            containers={make_container(dirs)},
            secrets={secret},
        )
        out = ctx.run(ctx.on.relation_changed(rel, remote_unit=0), state)
        ini = check_ini_shape(dirs, baseline_keys)
        assert set(ini["databases"]) == {"pgb_authdb"}
        assert MARK not in files_text(dirs)
        assert out.unit_status == testing.ActiveStatus("1 PgBouncer process")


CLIENT_FIELDS = (
    "database",
    "extra-user-roles",
    "requested-secrets",
    "requests",
    "external-node-connectivity",
    "entity-type",
    "salt",
    "data",
)
_VALID_DB = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]{0,62}")


@FUZZ
@given(field=st.sampled_from(CLIENT_FIELDS), value=hostile_values())
@example(field="external-node-connectivity", value=MARK)
@example(field="requests", value=json.dumps([{"resource": f"{MARK};x"}]))
def test_client_databag_field_fuzz(field: str, value: str, baseline_keys: set[str]):
    remote = {"database": "myapp", "requested-secrets": '["username", "password"]', field: value}
    if field == "requests":
        remote["version"] = "v1"
    fake = FakeClientSQL()
    with mount_dirs() as dirs:
        client = testing.Relation(
            "database", remote_app_name="myapp", remote_app_data=remote, remote_units_data={0: {}}
        )
        secret = auth_secret()
        ctx = testing.Context(charm_with(Effects(clients=fake)))
        state = testing.State(
            leader=True,
            model=MODEL,
            relations={client, backend_relation(), peer_relation(secret)},
            containers={make_container(dirs)},
            secrets={secret},
        )
        out = ctx.run(ctx.on.relation_changed(client, remote_unit=0), state)

        written = (dirs.pgb / "pgbouncer_0.ini").exists()
        ini = check_ini_shape(dirs, baseline_keys) if written else {"databases": {}}
        status = out.unit_status
        assert status.name in ("active", "blocked", "waiting"), status
        served = {c["database"] for c in fake.created}
        for created in fake.created:
            assert _VALID_DB.fullmatch(created["database"])
            assert set(created["extra_roles"]) <= {"CREATEDB"}
        assert set(ini["databases"]) <= {"pgb_authdb", *served, *(f"{d}_readonly" for d in served)}
        if status.name == "blocked":
            assert status.message.startswith(f"client relation {client.id}: "), status
        if not any(MARK in d for d in served):
            assert MARK not in files_text(dirs)
        # The library echoes the client's own request back to it (``data``, and ``database``
        # for v0 clients) before we look at it; nothing else we write carries the client's text
        # unless we accepted it as a database name.
        answer = dict(out.get_relation(client.id).local_app_data)
        echoed = {k for k, v in answer.items() if MARK in v} - {"data", "database"}
        if echoed and not any(MARK in d for d in served):
            assert echoed <= {"salt", "requests"}, echoed
