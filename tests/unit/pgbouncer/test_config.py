"""The renderer's contract: what it accepts parses back to the same values; the rest is refused."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgbouncer.config import (
    AUTH_DATABASE_KEY,
    AUTH_FILE,
    AuthSettings,
    DatabaseTarget,
    PgBouncerConfig,
    connection_share,
    effective_processes,
    read_only_group,
    render_auth_file,
    render_files,
    render_ini,
)
from pgbouncer.ini import (
    NO_RELOAD_KEYS,
    RenderError,
    needs_restart,
)


# -- an independent reader, written from pgbouncer.ini(5) and libusual's cfparser rules ------
def read_ini(text: str) -> dict[str, list[tuple[str, str]]]:
    """Sections → (key, value) pairs in order, as PgBouncer's line parser splits them."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in text.split("\n"):
        stripped = line.strip()
        if not stripped or stripped[0] in ";#":
            continue
        if stripped[0] == "[":
            assert stripped[-1] == "]", line
            current = sections.setdefault(stripped[1:-1], [])
            continue
        key_chars = string.ascii_letters + string.digits + "_.-*"
        end = 0
        while end < len(stripped) and stripped[end] in key_chars:
            end += 1
        key, rest = stripped[:end], stripped[end:].lstrip(" \t")
        assert key and rest.startswith("="), line
        assert current is not None
        current.append((key, rest[1:].strip(" \t")))
    return sections


def read_connstring(value: str) -> dict[str, str]:
    """``host=a port=b dbname=c`` → dict; every pair must be plain ``k=v`` with no quoting."""
    pairs = {}
    for token in value.split():
        key, sep, val = token.partition("=")
        assert sep and key and val and "=" not in val and "'" not in token, value
        assert key not in pairs, value
        pairs[key] = val
    return pairs


# -- strategies ---------------------------------------------------------------------------
NAME_START = string.ascii_letters + "_"
NAME_REST = string.ascii_letters + string.digits + "_-"
names = st.builds(
    lambda first, rest: first + rest,
    st.sampled_from(NAME_START),
    st.text(NAME_REST, max_size=40),
).filter(
    lambda n: (
        n.lower() not in {"pgbouncer", AUTH_DATABASE_KEY} and not n.lower().endswith("_readonly")
    )
)
labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
hosts = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    st.lists(labels, min_size=1, max_size=4).map(".".join),
)
ports = st.integers(1, 65535)


@st.composite
def targets(draw) -> tuple[DatabaseTarget, ...]:
    base = draw(st.lists(names, max_size=5, unique_by=str.lower))
    out = []
    for name in base:
        out.append(DatabaseTarget(name, draw(hosts), draw(ports), name))
        if len(name) <= 63 - len("_readonly") and draw(st.booleans()):
            replicas = draw(st.lists(hosts, min_size=1, max_size=4, unique=True))
            out.append(
                DatabaseTarget(
                    f"{name}_readonly", replicas[0], draw(ports), name, tuple(replicas[1:])
                )
            )
    if draw(st.booleans()):
        out.append(DatabaseTarget(AUTH_DATABASE_KEY, draw(hosts), draw(ports), "pgbouncer"))
    return tuple(out)


@st.composite
def configs(draw) -> PgBouncerConfig:
    databases = draw(targets())
    max_db = draw(st.integers(0, 500))
    processes = draw(st.integers(1, 4))
    if 0 < max_db < processes:
        processes = max_db
    auth = None
    if any(t.key == AUTH_DATABASE_KEY for t in databases) and draw(st.booleans()):
        user = draw(names)
        auth = AuthSettings(user, f"SELECT usename, passwd FROM {user}.get_auth($1)")  # noqa: S608
    return PgBouncerConfig(
        version=draw(st.sampled_from([(), (1, 21, 0), (1, 24, 1), (1, 26, 1)])),
        listen_port=draw(ports),
        pool_mode=draw(st.sampled_from(["session", "transaction", "statement"])),
        max_db_connections=max_db,
        max_prepared_statements=draw(st.integers(0, 1000)),
        processes=processes,
        databases=draws_shuffled(draw, databases),
        auth=auth,
    )


def draws_shuffled(draw, items: tuple) -> tuple:
    return tuple(draw(st.permutations(items))) if items else ()


# -- parse-back ---------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(configs())
def test_what_the_renderer_accepts_parses_back_to_the_same_values(cfg):
    files = render_files(cfg)
    assert len(files) == 3 * cfg.processes  # each process's three slots
    shares, twin_shares, socket_dirs = [], [], set()
    for number, text in enumerate(files.values()):
        index, slot = divmod(number, 3)
        ini = read_ini(text)
        assert list(ini) == ["databases", "peers", "pgbouncer"]
        databases = {key: read_connstring(value) for key, value in ini["databases"]}
        assert len(databases) == len(ini["databases"]), "duplicate key"
        balances = cfg.version >= (1, 24)
        assert databases == {
            t.key: {"host": ",".join(t.hosts), "port": str(t.port), "dbname": t.dbname}
            | ({"load_balance_hosts": "round-robin"} if t.more_hosts and balances else {})
            for t in cfg.databases
        }
        assert [k for k, _ in ini["databases"]] == sorted(databases)
        peers = {key: read_connstring(value) for key, value in ini["peers"]}
        assert set(peers) == {str(p + 1 + 4 * k) for p in range(cfg.processes) for k in range(3)}
        assert {p["port"] for p in peers.values()} == {str(cfg.listen_port)}
        settings_ = dict(ini["pgbouncer"])
        assert len(settings_) == len(ini["pgbouncer"]), "duplicate setting"
        assert settings_["listen_port"] == str(cfg.listen_port)
        assert settings_["pool_mode"] == cfg.pool_mode
        assert settings_["peer_id"] == str(index + 1 + 4 * slot)
        assert peers[settings_["peer_id"]]["host"] == settings_["unix_socket_dir"]
        socket_dirs.add(settings_["unix_socket_dir"])
        assert settings_["max_prepared_statements"] == str(cfg.max_prepared_statements)
        assert settings_["so_reuseport"] == "1"
        if cfg.auth is None:
            assert "auth_user" not in settings_ and "auth_query" not in settings_
        else:
            assert settings_["auth_user"] == cfg.auth.auth_user
            assert settings_["auth_query"] == cfg.auth.auth_query
            assert settings_["auth_dbname"] == AUTH_DATABASE_KEY
        (twin_shares if slot else shares).append(int(settings_["max_db_connections"]))
    assert len(socket_dirs) == len(files), "two slots share a socket directory"
    assert twin_shares == [share for share in shares for _ in range(2)]
    assert sum(shares) == cfg.max_db_connections
    if cfg.max_db_connections:
        assert min(shares) >= 1, "a share of 0 would mean unlimited"
        assert max(shares) - min(shares) <= 1
    else:
        assert set(shares) == {0}


# -- hostile input is refused -------------------------------------------------------------
HOSTILE = [
    "app db",
    "app\tdb",
    "app=db",
    "app;db",
    "app'db",
    'app"db',
    "app\ndb",
    "app\rdb",
    "appdb\n[pgbouncer]",
    "a" * 64,
    "",
    "pgbouncer",
    "PgBouncer",
    "1appdb",
    "app#db",
    "app%include",
    "ü",
]


def _cfg(**kwargs) -> PgBouncerConfig:
    base = {
        "listen_port": 6432,
        "pool_mode": "session",
        "max_db_connections": 10,
        "max_prepared_statements": 100,
        "processes": 2,
    }
    base.update(kwargs)
    return PgBouncerConfig(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", HOSTILE)
def test_a_hostile_database_key_is_refused(bad):
    with pytest.raises(RenderError):
        render_files(_cfg(databases=(DatabaseTarget(bad, "10.0.0.1", 5432, "appdb"),)))


@pytest.mark.parametrize("bad", [*HOSTILE[:11], "1appdb"])
def test_a_hostile_dbname_is_refused(bad):
    with pytest.raises(RenderError):
        render_files(_cfg(databases=(DatabaseTarget("appdb", "10.0.0.1", 5432, bad),)))


@pytest.mark.parametrize(
    "bad",
    ["host name", "host=x", "10.0.0.1 port=1", "h;x", "h'x", "h\nx", "", "-host", "a" * 254],
)
def test_a_hostile_host_is_refused(bad):
    with pytest.raises(RenderError):
        render_files(_cfg(databases=(DatabaseTarget("appdb", bad, 5432, "appdb"),)))


@pytest.mark.parametrize(
    "bad",
    [("a,b",), ("b port=1",), ("",), ("10.0.0.1",), ("x",) * 16, ["b"], ("b", "b"), ("h\nx",)],
)
def test_a_bad_host_list_is_refused(bad):
    with pytest.raises(RenderError):
        render_files(
            _cfg(databases=(DatabaseTarget("appdb_readonly", "10.0.0.1", 5432, "appdb", bad),))
        )


def test_a_host_list_balances_only_where_pgbouncer_has_load_balance_hosts():
    target = DatabaseTarget("appdb_readonly", "10.0.0.2", 5432, "appdb", ("10.0.0.3",))
    new = render_ini(_cfg(databases=(target,), version=(1, 24, 1)), 0)
    old = render_ini(_cfg(databases=(target,), version=(1, 21, 0)), 0)
    line = "appdb_readonly = host=10.0.0.2,10.0.0.3 port=5432 dbname=appdb"
    assert line + " load_balance_hosts=round-robin\n" in new
    assert line + "\n" in old
    single = DatabaseTarget("appdb_readonly", "10.0.0.2", 5432, "appdb")
    assert "load_balance_hosts" not in render_ini(_cfg(databases=(single,), version=(1, 24)), 0)


@pytest.mark.parametrize(
    ("endpoints", "expected"),
    [
        ([], None),
        ([("r1", 5432)], (("r1",), 5432)),
        ([("r1", 5432), ("r2", 5432), ("r1", 5432)], (("r1", "r2"), 5432)),
        # one port for a whole list: the port most replicas share wins, the others are left out
        ([("r1", 5433), ("r2", 5432), ("r3", 5432)], (("r2", "r3"), 5432)),
        # a tie goes to the first replica's port
        ([("r1", 5433), ("r2", 5432)], (("r1",), 5433)),
    ],
)
def test_read_only_group(endpoints, expected):
    from state.backend import Endpoint

    assert read_only_group([Endpoint(h, p) for h, p in endpoints]) == expected


@pytest.mark.parametrize("bad", [0, 65536, -1, "5432 x", True, 5432.0])
def test_a_bad_port_is_refused(bad):
    with pytest.raises(RenderError):
        render_files(_cfg(databases=(DatabaseTarget("appdb", "h", bad, "appdb"),)))
    with pytest.raises(RenderError):
        render_files(_cfg(listen_port=bad))


text_with_a_break = st.builds(
    lambda a, br, b: a + br + b,
    st.text(max_size=20),
    st.sampled_from(["\n", "\r", "\x00"]),
    st.text(max_size=20),
)


@settings(max_examples=200, deadline=None)
@given(st.one_of(text_with_a_break, st.text().filter(lambda s: s != s.strip() or not s)))
def test_an_auth_query_that_would_break_the_line_is_refused(query):
    cfg = _cfg(
        databases=(DatabaseTarget(AUTH_DATABASE_KEY, "h", 5432, "pgbouncer"),),
        auth=AuthSettings("auth_user", query),
    )
    with pytest.raises(RenderError):
        render_files(cfg)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=70))
def test_any_key_the_renderer_accepts_is_a_plain_token(key):
    cfg = _cfg(databases=(DatabaseTarget(key, "h", 5432, "appdb"),))
    try:
        text = render_ini(cfg, 0)
    except RenderError:
        return
    assert len(key.encode()) <= 63
    assert key.lower() != "pgbouncer"
    assert read_ini(text)["databases"] == [(key, "host=h port=5432 dbname=appdb")]


def test_duplicate_keys_are_refused():
    dup = (
        DatabaseTarget("appdb", "h1", 5432, "appdb"),
        DatabaseTarget("appdb", "h2", 5432, "appdb"),
    )
    with pytest.raises(RenderError, match="twice"):
        render_files(_cfg(databases=dup))


def test_auth_dbname_must_name_a_database_entry():
    with pytest.raises(RenderError, match="auth_dbname"):
        render_files(_cfg(auth=AuthSettings("auth_user", "SELECT 1")))


def test_auth_database_key_may_point_at_a_database_named_pgbouncer():
    text = render_ini(
        _cfg(databases=(DatabaseTarget(AUTH_DATABASE_KEY, "h", 5432, "pgbouncer"),)), 0
    )
    assert "pgb_authdb = host=h port=5432 dbname=pgbouncer\n" in text


def test_a_readonly_key_of_a_reserved_name_is_refused():
    with pytest.raises(RenderError):
        render_files(_cfg(databases=(DatabaseTarget("pgbouncer_readonly", "h", 1, "x"),)))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("pool_mode", "Session"),
        ("pool_mode", "transaction "),
        ("max_db_connections", -1),
        ("max_prepared_statements", 1001),
        ("processes", 0),
        ("processes", 5),
        ("listen_addr", "0.0.0.0 evil=1"),
        ("max_client_conn", 0),
    ],
)
def test_bad_settings_are_refused(field, value):
    with pytest.raises(RenderError):
        render_files(_cfg(**{field: value}))


def test_more_processes_than_connections_is_refused():
    with pytest.raises(RenderError, match="processes"):
        render_files(_cfg(max_db_connections=1, processes=2))


@pytest.mark.parametrize("index", [-1, 2])
def test_render_ini_refuses_an_index_outside_the_processes(index):
    with pytest.raises(RenderError):
        render_ini(_cfg(), index)


@pytest.mark.parametrize("base", ["relative/dir", "/tmp/a b", "/tmp/a'b", "/tmp/x\n"])
def test_bad_base_dirs_are_refused(base):
    with pytest.raises(RenderError):
        render_files(_cfg(), base_dir=base)


def test_render_error_never_echoes_the_value():
    secretish = "x;DROP TABLE users;--"
    with pytest.raises(RenderError) as err:
        render_files(_cfg(databases=(DatabaseTarget(secretish, "h", 1, "d"),)))
    assert secretish not in str(err.value)


# -- effective_processes and shares ---------------------------------------------------------
@pytest.mark.parametrize(
    ("cpus", "max_db", "expected"),
    [
        (0, 100, 1),
        (1, 100, 1),
        (2, 100, 2),
        (4, 100, 4),
        (64, 100, 4),
        (4, 0, 4),
        (4, 3, 3),
        (4, 1, 1),
        (2, 2, 2),
        (3, 5, 3),
    ],
)
def test_effective_processes(cpus, max_db, expected):
    assert effective_processes(cpus, max_db) == expected


@given(st.integers(0, 10_000), st.integers(1, 4))
def test_shares_add_up_and_differ_by_at_most_one(m, n):
    shares = [connection_share(m, n, i) for i in range(n)]
    assert sum(shares) == m
    assert max(shares) - min(shares) <= 1
    assert shares == sorted(shares, reverse=True)


def test_worked_example_from_the_docs():
    assert [connection_share(10, 4, i) for i in range(4)] == [3, 3, 2, 2]
    assert effective_processes(cpu_count=4, max_db_connections=3) == 3


# -- needs_restart ------------------------------------------------------------------------
BASE_CFG = _cfg(databases=(DatabaseTarget("appdb", "h1", 5432, "appdb"),))


def test_no_old_file_needs_a_start():
    assert needs_restart(None, render_ini(BASE_CFG, 0))


def test_same_file_needs_nothing():
    text = render_ini(BASE_CFG, 0)
    assert not needs_restart(text, text)


@pytest.mark.parametrize(
    "change",
    [
        {"databases": (DatabaseTarget("appdb", "h2", 5433, "appdb"),)},
        {"databases": ()},
        {"pool_mode": "transaction"},
        {"max_db_connections": 40},
        {"max_prepared_statements": 0},
        {"processes": 1},
        {"processes": 3},
        {
            "databases": (DatabaseTarget(AUTH_DATABASE_KEY, "h", 5432, "pgbouncer"),),
            "auth": AuthSettings("auth_user", "SELECT 1"),
        },
    ],
)
def test_reloadable_changes_do_not_restart(change):
    old = render_ini(BASE_CFG, 0)
    new = render_ini(_cfg(**{**BASE_CFG.__dict__, **change}), 0)
    assert old != new
    assert not needs_restart(old, new)


@pytest.mark.parametrize("change", [{"listen_port": 7000}, {"listen_addr": "127.0.0.1"}])
def test_listen_changes_restart(change):
    old = render_ini(BASE_CFG, 0)
    new = render_ini(_cfg(**{**BASE_CFG.__dict__, **change}), 0)
    assert needs_restart(old, new)


def test_base_dir_change_restarts():
    old = render_ini(BASE_CFG, 0)
    assert needs_restart(old, render_ini(BASE_CFG, 0, base_dir="/srv/pgb"))


@pytest.mark.parametrize("key", sorted(NO_RELOAD_KEYS))
def test_every_no_reload_key_added_by_hand_restarts(key):
    old = render_ini(BASE_CFG, 0)
    assert needs_restart(old, old + f"{key} = 4242\n")


def test_an_unreadable_old_file_restarts():
    assert needs_restart("[pgbouncer\nlisten_port = 1\n", render_ini(BASE_CFG, 0))


def test_a_comment_change_does_not_restart():
    old = render_ini(BASE_CFG, 0)
    assert not needs_restart(old, "; another comment\n" + old)


# -- the auth file --------------------------------------------------------------------------
def test_auth_file_line():
    assert render_auth_file("pgbouncer_auth_x", "s3cret") == '"pgbouncer_auth_x" "s3cret"\n'


def test_auth_file_doubles_quotes():
    assert render_auth_file("u", 'a"b""c') == '"u" "a""b""""c"\n'


def test_auth_file_path_is_the_documented_one():
    assert AUTH_FILE == "/var/lib/pgbouncer/userlist.txt"


@pytest.mark.parametrize(
    "password",
    [
        "",
        "a\nb",
        "a\rb",
        "a\x00b",
        "x" * 101,
        "md5" + "0123456789abcdef" * 2,
        "SCRAM-SHA-256$4096:c2FsdA==$a:b",
    ],
)
def test_auth_file_refuses_unusable_passwords(password):
    with pytest.raises(RenderError) as err:
        render_auth_file("u", password)
    assert not password or password not in str(err.value)


@pytest.mark.parametrize("user", ['a"b', "a b", "", "x" * 64, "a\nb"])
def test_auth_file_refuses_bad_user_names(user):
    with pytest.raises(RenderError):
        render_auth_file(user, "password")


@given(st.text(min_size=1, max_size=100).filter(lambda p: not any(c in p for c in "\n\r\x00")))
def test_auth_file_round_trips_through_the_quoting(password):
    try:
        line = render_auth_file("u", password)
    except RenderError:
        return
    assert line.startswith('"u" "') and line.endswith('"\n')
    body = line[len('"u" "') : -2]
    # Undo the documented escaping: every '"' inside appears doubled.
    assert body.replace('""', "").count('"') == 0
    assert body.replace('""', '"') == password
