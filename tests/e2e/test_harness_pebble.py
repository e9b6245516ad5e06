"""The one Pebble stand-in: its rules, on real processes, and served on a socket to ops' client.

:class:`harness.pebble_standin.PebbleStandIn` is what the e2e harness replays recorded calls on
(its process backend: :class:`harness.processes.PebbleProcessRunner`) and what the bench serves
over Pebble's HTTP API (:mod:`harness.pebble_socket`). These tests hold it to Pebble's rules:
layering, replan against the definitions services were started from, exit policies from those
same definitions, signals, exec, files with their permissions and owners.
"""

from __future__ import annotations

import pwd
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from ops import pebble

from harness.pebble_socket import PebbleSocket
from harness.pebble_standin import PebbleError, PebbleStandIn, ServiceSpec, combine_layers
from harness.processes import PebbleCall, PebbleProcessRunner, ProcessError
from harness.servers.system import is_root

LOCATION = "/var/lib/pgbouncer"
SLEEPER = {"override": "replace", "command": "sleep 300", "startup": "enabled"}

needs_root = pytest.mark.skipif(not is_root(), reason="real processes need root (namespaces)")


def _layer(**services: dict[str, Any]) -> dict[str, Any]:
    return {"services": services}


# -- the rules, without processes (as the bench runs it) --------------------------------------


def test_layers_merge_or_replace_as_each_service_says():
    base = _layer(a={**SLEEPER, "environment": {"X": "1", "Y": "1"}, "user": "postgres"})
    merged = combine_layers(
        [base, _layer(a={"override": "merge", "environment": {"Y": "2"}, "startup": "disabled"})]
    )
    assert merged["a"]["environment"] == {"X": "1", "Y": "2"}
    assert (merged["a"]["user"], merged["a"]["startup"]) == ("postgres", "disabled")
    replaced = combine_layers([base, _layer(a={"override": "replace", "command": "true"})])
    assert replaced["a"] == {"override": "replace", "command": "true"}


def test_a_label_is_added_once_unless_combined(tmp_path: Path):
    standin = PebbleStandIn({LOCATION: tmp_path})
    standin.add_layer("l", _layer(a=SLEEPER))
    with pytest.raises(PebbleError, match="already exists"):
        standin.add_layer("l", _layer(a=SLEEPER))
    standin.add_layer("l", _layer(b=SLEEPER), combine=True)
    assert set(standin.plan()) == {"a", "b"}


def test_the_plan_holds_the_checks_and_a_combined_layer_replaces_them(tmp_path: Path):
    """Pebble's plan has checks beside services (the charm compares both before adding a layer)."""
    standin = PebbleStandIn({LOCATION: tmp_path})
    check = {"override": "replace", "level": "ready", "tcp": {"host": "127.0.0.1", "port": 1}}
    standin.add_layer("l", {"services": {}, "checks": {"c": check}})
    assert standin.checks() == {"c": check}
    moved = {**check, "tcp": {"host": "127.0.0.1", "port": 2}}
    standin.add_layer("l", {"checks": {"c": moved}}, combine=True)
    assert standin.checks() == {"c": moved}


def test_replan_acts_on_what_it_ran_not_only_on_what_is_enabled(tmp_path: Path):
    """Pebble's replan: a service run before whose definition changed is (re)started."""
    standin = PebbleStandIn({LOCATION: tmp_path})
    standin.add_layer("l", _layer(on=SLEEPER, off={**SLEEPER, "startup": "disabled"}))
    assert standin.replan().started == ["on"]
    standin.start(["off"])
    standin.stop(["off"])
    assert standin.replan().started == []  # nothing changed: a stopped disabled one stays so
    standin.add_layer(
        "l", _layer(off={"override": "merge", "summary": "x", "command": "true"}), True
    )
    assert standin.replan().started == ["off"]
    standin.add_layer("l", _layer(on={"override": "merge", "command": "sleep 1"}), combine=True)
    assert standin.replan().restarted == ["on"]
    assert standin.active() == {"on", "off"}


def test_signals_go_to_active_services_only(tmp_path: Path):
    standin = PebbleStandIn({LOCATION: tmp_path}, layers={"l": _layer(a=SLEEPER)})
    with pytest.raises(PebbleError, match="not running"):
        standin.signal(["a"], "SIGHUP")
    standin.replan()
    assert standin.signal(["a"], signal.SIGHUP).signalled == [("a", "SIGHUP")]
    with pytest.raises(PebbleError, match="does not exist"):
        standin.start(["nope"])


def test_files_keep_their_permissions_and_stay_inside_the_mounts(tmp_path: Path):
    standin = PebbleStandIn({LOCATION: tmp_path})
    standin.push(f"{LOCATION}/sub/secret", b"x", permissions=0o600, make_dirs=True)
    assert (tmp_path / "sub" / "secret").stat().st_mode & 0o777 == 0o600
    entry = standin.list_files(f"{LOCATION}/sub")[0]
    assert (entry["name"], entry["permissions"]) == ("secret", "600")
    standin.push(f"{LOCATION}/sub/secret", b"y", permissions=0o660)  # not under the umask
    assert standin.pull(f"{LOCATION}/sub/secret") == b"y"
    assert (tmp_path / "sub" / "secret").stat().st_mode & 0o777 == 0o660
    with pytest.raises(PebbleError) as outside:
        standin.push(f"{LOCATION}/../escape", b"x")
    assert outside.value.kind == "permission-denied"
    with pytest.raises(PebbleError) as missing:
        standin.pull("/sys/fs/cgroup/cpu.max")
    assert missing.value.kind == "not-found"
    standin.make_dir(f"{LOCATION}/run/0", make_parents=True, permissions=0o700)
    assert (tmp_path / "run" / "0").stat().st_mode & 0o777 == 0o700
    standin.remove(f"{LOCATION}/sub/secret")
    assert not (tmp_path / "sub" / "secret").exists()


@needs_root
def test_files_are_owned_as_asked_else_by_root(tmp_path: Path):
    standin = PebbleStandIn({LOCATION: tmp_path})
    standin.push(f"{LOCATION}/a", b"", user="postgres")
    standin.push(f"{LOCATION}/b", b"")
    assert (tmp_path / "a").stat().st_uid == pwd.getpwnam("postgres").pw_uid
    assert (tmp_path / "b").stat().st_uid == 0


# -- exit policies and exec, on real processes (the e2e harness) ------------------------------


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[PebbleProcessRunner]:
    if not is_root():
        pytest.skip("real processes need root (namespaces)")
    with PebbleProcessRunner({LOCATION: tmp_path}, workdir=tmp_path) as r:
        yield r


def _wait_ended(runner: PebbleProcessRunner, name: str) -> None:
    deadline = time.monotonic() + 10
    while runner.pebble.processes is not None and runner.exit_code(name) is None:
        assert time.monotonic() < deadline, f"{name} did not end"
        time.sleep(0.02)


def test_on_success_comes_from_the_definition_the_process_was_started_with(runner, tmp_path):
    """Started with ``restart`` (Pebble's default), then the plan says ``ignore``: it restarts.

    The opposite order leaves it inactive. On the harness that read ``on-success`` from the
    current plan, the first half failed: the process stayed down.
    """
    # Exits 0 at once the first time, runs on when started again.
    ran = f"{LOCATION}/ran"
    script = f"sh -c 'if [ -e {ran} ]; then exec sleep 300; fi; touch {ran}'"
    runner.apply([PebbleCall("c", "replan")], {"s": {**SLEEPER, "command": script}})
    runner.set_plan({"s": {**SLEEPER, "command": script, "on-success": "ignore"}})
    _wait_ended(runner, "s")
    first = runner.processes["s"].pid
    assert runner.exited() == {"s": 0}  # not reaped yet
    assert runner.reap() == {}  # restarted from the started definition: still active
    assert runner.running() == {"s"} and runner.processes["s"].pid != first
    assert runner.pebble.started["s"].on_success == "restart"

    (tmp_path / "ran").unlink()
    runner.apply(
        [PebbleCall("c", "restart", ("s",))],
        {"s": {**SLEEPER, "command": script, "on-success": "ignore"}},
    )
    runner.set_plan({"s": {**SLEEPER, "command": script}})  # plan back to restart
    _wait_ended(runner, "s")
    assert runner.reap() == {"s": "inactive"}
    assert runner.running() == set() and runner.exited() == {}


def test_on_failure_restarts_and_keeps_the_crash_visible(runner):
    crash = {**SLEEPER, "command": "sh -c 'exit 3'"}
    runner.apply([PebbleCall("c", "replan")], {"s": crash})
    _wait_ended(runner, "s")
    assert runner.reap() == {"s": "error"}  # restarted, failed at once: back-off
    assert runner.exited() == {"s": 3}
    runner.apply([PebbleCall("c", "start", ("s",))], {"s": {**crash, "on-failure": "ignore"}})
    _wait_ended(runner, "s")
    assert runner.reap() == {"s": "inactive"}
    assert runner.pebble.crashes == [("s", 3), ("s", 3)]
    with pytest.raises(ProcessError, match="not running"):
        runner.signal(["s"])


def test_exec_runs_as_the_user_asked_with_the_mounts(runner, tmp_path: Path):
    tmp_path.chmod(0o755)  # the mount's directory itself, as the charm's is
    (tmp_path / "seen").write_text("inside\n")
    code, out, _ = runner.pebble.exec(
        ["sh", "-c", f"id -un; cat {LOCATION}/seen"], user="postgres"
    )
    assert (code, out.decode().split()) == (0, ["postgres", "inside"])
    assert PebbleStandIn({LOCATION: tmp_path}).statuses == {}
    with pytest.raises(PebbleError, match="not served"):
        PebbleStandIn({LOCATION: tmp_path}).exec(["true"])


# -- the bench's socket: ops' own Pebble client against the same rules ------------------------


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[pebble.Client, PebbleStandIn]]:
    standin = PebbleStandIn({LOCATION: tmp_path / "mount"})
    (tmp_path / "mount").mkdir()
    socket = PebbleSocket(tmp_path / "pebble.socket", standin)
    try:
        yield pebble.Client(socket_path=str(tmp_path / "pebble.socket")), standin
    finally:
        socket.close()


def test_the_socket_serves_the_stand_in_to_ops_client(served, tmp_path: Path):
    client, standin = served
    client.add_layer("l", pebble.Layer(cast(pebble.LayerDict, _layer(a=SLEEPER))), combine=True)
    client.replan_services()
    assert [s.current for s in client.get_services(["a"])] == [pebble.ServiceStatus.ACTIVE]
    assert standin.started["a"] == ServiceSpec.from_service(SLEEPER)
    client.send_signal("SIGHUP", ["a"])
    client.stop_services(["a"])
    with pytest.raises(pebble.APIError, match="not running"):
        client.send_signal("SIGHUP", ["a"])
    with pytest.raises(pebble.APIError, match="already exists"):
        client.add_layer("l", pebble.Layer(cast(pebble.LayerDict, _layer(a=SLEEPER))))
    client.push(f"{LOCATION}/f.ini", "k = v\n", permissions=0o600, make_dirs=True)
    assert (tmp_path / "mount" / "f.ini").stat().st_mode & 0o777 == 0o600
    assert client.pull(f"{LOCATION}/f.ini").read() == "k = v\n"
    assert [f.permissions for f in client.list_files(LOCATION)] == [0o600]
    with pytest.raises(pebble.PathError) as missing:
        client.pull("/sys/fs/cgroup/cpu.max")
    assert missing.value.kind == "not-found"
    assert standin.calls["POST /v1/services"] == 2
