"""The pure parts of pausing one database.

The marker, the admin user's ini and auth line, the status, and the service a console
connection names.
"""

from __future__ import annotations

import json

import ops
import pytest

from pgbouncer.config import AuthSettings, DatabaseTarget, PgBouncerConfig, render_ini
from pgbouncer.console import _peer_of_service, service_of_peer
from pgbouncer.exporter import STATS_USER
from pgbouncer.ini import RenderError, parse_ini
from pgbouncer.pause import PAUSED_FILE, PauseMarker, marker_in
from pgbouncer.slots import MAX_PROCESSES, SLOTS, service_name
from postgres.passwords import generate_password, scram_verifier_matches
from relations.admin import ADMIN_USER, render_admin_auth_line
from state.charm_state import CharmState
from status import UnitOutcome, unit_statuses


def _cfg(**kw) -> PgBouncerConfig:
    base = {
        "listen_port": 6432,
        "pool_mode": "transaction",
        "max_db_connections": 10,
        "max_prepared_statements": 0,
        "processes": 1,
        "databases": (DatabaseTarget("app", "10.0.0.1", 5432, "app"),),
    }
    return PgBouncerConfig(**(base | kw))


def test_a_marker_of_the_first_version_means_the_whole_unit():
    assert PauseMarker.from_text(json.dumps({"since": 5.0})) == PauseMarker(5.0, True, ())


@pytest.mark.parametrize("text", ["", "[]", "{", '{"since": "x"}', '{"databases": [1]}'])
def test_a_damaged_marker_still_means_paused(text):
    assert PauseMarker.from_text(text) == PauseMarker(0.0, True, ())


def test_the_marker_round_trips_and_lists_each_database_once():
    marker = PauseMarker.from_text(
        json.dumps({"since": 1.5, "unit": False, "databases": ["b", "a", "b"]})
    )
    assert marker == PauseMarker(1.5, False, ("a", "b"))
    assert PauseMarker.from_text(marker.to_text()) == marker
    assert marker_in({PAUSED_FILE: marker.to_text()}) == marker
    assert marker_in({}) is None
    assert not marker.empty
    assert PauseMarker(1.0, False, ()).empty


@pytest.mark.parametrize("index", range(MAX_PROCESSES))
@pytest.mark.parametrize("slot", range(SLOTS))
def test_the_service_of_a_peer_id_names_that_peer_id_back(index, slot):
    name = service_name(index, slot)
    assert service_of_peer(_peer_of_service(name)) == name


def test_admin_users_is_rendered_only_when_asked():
    assert "admin_users" not in render_ini(_cfg(), 0)
    ini = parse_ini(render_ini(_cfg(stats_user=STATS_USER, admin_user=ADMIN_USER), 0))
    assert ini["pgbouncer"]["admin_users"] == ADMIN_USER
    assert ini["pgbouncer"]["stats_users"] == STATS_USER


@pytest.mark.parametrize("user", ["a b", "x\nauth_type = trust", "", "x,postgres"])
def test_a_hostile_admin_user_is_refused(user):
    with pytest.raises(RenderError):
        render_ini(_cfg(admin_user=user), 0)


def test_the_admin_user_is_neither_the_auth_user_nor_a_stats_user():
    auth = AuthSettings(auth_user="pgbouncer_auth_x", auth_query="SELECT 1", auth_dbname="app")
    with pytest.raises(RenderError, match="admin_user"):
        render_ini(_cfg(auth=auth, admin_user="pgbouncer_auth_x"), 0)
    with pytest.raises(RenderError, match="admin_user"):
        render_ini(_cfg(stats_user=f"{STATS_USER}, x", admin_user="x"), 0)


def test_the_admin_auth_line_holds_a_verifier_of_the_password_not_the_password():
    password = generate_password()
    line = render_admin_auth_line(password)
    user, verifier = (part.strip('"') for part in line.split())
    assert user == ADMIN_USER
    assert password not in line
    assert scram_verifier_matches(verifier, password)


def test_the_status_names_the_paused_databases():
    state = CharmState(leader=True, config=None, can_connect=True, backend_related=False)
    statuses = unit_statuses(
        state, _image(), UnitOutcome(running=True, paused_databases=("appdb",)), _leader()
    )
    assert (
        ops.MaintenanceStatus(
            "database appdb paused (pause action): its clients wait until resume"
        )
        in statuses
    )
    assert not any("paused (pause action): clients" in s.message for s in statuses)
    two = UnitOutcome(running=True, paused_databases=("a", "b"))
    assert ops.MaintenanceStatus(
        "databases a, b paused (pause action): their clients wait until resume"
    ) in unit_statuses(state, _image(), two, _leader())


def _image():
    from pgbouncer.image import ImageFacts

    return ImageFacts()


def _leader():
    from reconcile import LeaderOutcome

    return LeaderOutcome()
