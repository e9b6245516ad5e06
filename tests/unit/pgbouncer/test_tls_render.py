"""TLS in the renderer and the workload: the four files, their modes, reload never restart."""

from __future__ import annotations

import dataclasses
import stat

import pytest

from harness.servers.tls import make_ca
from pgbouncer.config import (
    AUTH_FILE,
    ClientTLS,
    DatabaseTarget,
    PgBouncerConfig,
    ServerTLS,
    client_tls_ca_path,
    client_tls_cert_path,
    client_tls_key_path,
    render_files,
    render_ini,
    render_tls_files,
    server_tls_ca_path,
)
from pgbouncer.ini import (
    RenderError,
    needs_restart,
    parse_ini,
)
from state.tls import BackendTLS, ClientTLSMaterial
from tests.unit.pgbouncer.test_workload_scenario import run

CA = make_ca("render CA")
PG_CA = make_ca("postgres CA")


def material(ca=CA) -> ClientTLSMaterial:
    leaf = ca.leaf()
    return ClientTLSMaterial.from_pem(leaf.cert_pem, leaf.key_pem, ca.pem)


BACKEND = BackendTLS.from_databag({"tls": "True", "tls-ca": PG_CA.pem})

BASE_CFG = PgBouncerConfig(
    listen_port=6432,
    pool_mode="session",
    max_db_connections=10,
    max_prepared_statements=100,
    processes=2,
    databases=(DatabaseTarget("appdb", "10.0.0.1", 5432, "appdb"),),
)


def test_tls_files_on_and_off():
    mat = material()
    on = render_tls_files(mat, BACKEND)
    assert on == {
        client_tls_key_path(): mat.key_pem,
        client_tls_cert_path(): mat.cert_pem,
        client_tls_ca_path(): mat.ca_pem,
        server_tls_ca_path(): PG_CA.pem,
    }
    off = render_tls_files(None, None)
    assert set(off) == set(on)
    assert set(off.values()) == {None}  # deleted when not in use


def test_tls_files_are_under_the_base_dir():
    files = render_tls_files(material(), BACKEND, base_dir="/tmp/x")
    assert all(path.startswith("/tmp/x/") and path.count("/") == 3 for path in files)


def test_render_tls_files_refuses_anything_but_checked_material():
    mat = material()
    with pytest.raises(RenderError):
        render_tls_files({"key_pem": "x"}, None)  # type: ignore[arg-type]
    forged = dataclasses.replace(mat, key_pem="[pgbouncer]\nauth_type = trust\n")
    with pytest.raises(RenderError):
        render_tls_files(forged, None)


@pytest.mark.parametrize(
    "change",
    [
        {"client_tls": ClientTLS("disable")},
        {"client_tls": ClientTLS("verify-full")},
        {"client_tls": ClientTLS("require\nauth_type = trust")},
        {"server_tls": ServerTLS("prefer")},
        {"server_tls": ServerTLS("disable")},
        {"server_tls": ServerTLS("verify-full\nauth_type = trust")},
        {"client_tls": "require"},
    ],
)
def test_only_the_known_modes_render(change):
    with pytest.raises(RenderError):
        render_files(dataclasses.replace(BASE_CFG, **change))


def test_tls_lines_parse_and_name_the_files():
    cfg = dataclasses.replace(
        BASE_CFG, client_tls=ClientTLS("require"), server_tls=ServerTLS("verify-full")
    )
    ini = parse_ini(render_ini(cfg, 1))["pgbouncer"]
    assert ini["client_tls_sslmode"] == "require"
    assert ini["client_tls_key_file"] == client_tls_key_path()
    assert ini["client_tls_cert_file"] == client_tls_cert_path()
    assert ini["client_tls_ca_file"] == client_tls_ca_path()
    assert ini["server_tls_sslmode"] == "verify-full"
    assert ini["server_tls_ca_file"] == server_tls_ca_path()
    off = parse_ini(render_ini(BASE_CFG, 1))["pgbouncer"]
    assert not any(key.startswith(("client_tls", "server_tls")) for key in off)


def test_turning_tls_on_or_off_is_a_reload_not_a_restart():
    on = dataclasses.replace(BASE_CFG, client_tls=ClientTLS("require"), server_tls=ServerTLS())
    for i in range(2):
        assert not needs_restart(render_ini(BASE_CFG, i), render_ini(on, i))
        assert not needs_restart(render_ini(on, i), render_ini(BASE_CFG, i))


# -- through the workload (Scenario's Pebble, files in a real directory) ---------------------


def files(cfg: PgBouncerConfig, mat, backend) -> dict[str, str | None]:
    return {**render_files(cfg), AUTH_FILE: "", **render_tls_files(mat, backend)}


def test_tls_files_are_0600_and_rotation_reloads_every_process(state, tmp_path):
    on = dataclasses.replace(BASE_CFG, client_tls=ClientTLS("require"), server_tls=ServerTLS())
    first = material()
    _, out = run(state, files(on, first, BACKEND), 2)
    for name in ("client-tls.key", "client-tls.crt", "client-tls-ca.crt", "server-tls-ca.crt"):
        path = tmp_path / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
    assert (tmp_path / "client-tls.key").read_text() == first.key_pem

    renewed = material()
    result, out = run(out, files(on, renewed, BACKEND), 2)
    assert set(result.written) == {client_tls_key_path(), client_tls_cert_path()}
    assert result.reloaded == ("pgbouncer_0", "pgbouncer_1")
    assert result.restarted == result.started == result.stopped == ()
    assert (tmp_path / "client-tls.crt").read_text() == renewed.cert_pem

    # The same material again: nothing is written, nothing reloaded.
    result, out = run(out, files(on, renewed, BACKEND), 2)
    assert not result.changed, str(result)

    # The relation goes: back to plain by reload, and the key leaves the disk.
    result, _ = run(out, files(BASE_CFG, None, None), 2)
    assert result.reloaded == ("pgbouncer_0", "pgbouncer_1")
    assert result.restarted == ()
    assert not (tmp_path / "client-tls.key").exists()
    assert not (tmp_path / "server-tls-ca.crt").exists()
