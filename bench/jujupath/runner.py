"""Inside a private mount namespace: serve the stand-in Pebble, run every hook, write the figures.

``python -m bench.jujupath.runner <job.json> <out.json>``, started by :mod:`bench.jujupath` under
``unshare --mount --propagation private``. It bind-mounts a temporary directory on ``/charm`` (the
host sees nothing of it), where ops looks for ``containers/pgbouncer/pebble.socket``, then runs
each hook as Juju does, through the small ``launch`` program: ``./dispatch`` in the charm
directory, a fresh ``python3 src/charm.py``, ``ops.main``. Before every run the unit's stored
state (``.unit-state.db``), the container's files and the stand-in's plan are put back as they
were before the hook. Cases and the two charms are interleaved, round after round.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from harness.pebble_socket import PebbleSocket
from harness.pebble_standin import PebbleStandIn

SETTLED_RECORD = ".settled.json"
"""src/settled.py's RECORD_FILE (the bench does not import the charm's modules here)."""
_RECORDS: dict[str, str] = {}
"""Steady state (its container snapshot) → the settled record our charm's warm-up update-status
wrote there: the record a unit keeps between hooks in that state. A case that changes an input
(a config-changed with a new value) starts from it, not from the record its own run writes."""


def _drop_pycache(root: Path) -> None:
    for cache in list(root.rglob("__pycache__")):
        shutil.rmtree(cache, ignore_errors=True)


def _prepare_run(job: dict[str, Any], case: dict[str, Any], charm: dict[str, Any]) -> None:
    charm_dir = Path(charm["dir"])
    shutil.copyfile(case["unit_state_db"], charm_dir / ".unit-state.db")
    work = Path(case["mount_work"])
    subprocess.run(["rm", "-rf", str(work)], check=True)
    subprocess.run(["cp", "-a", case["mount_snapshot"], str(work)], check=True)
    Path(case["calls"]).write_text("")
    Path(case["calls"] + ".status").write_text("")
    Path(case["calls"] + ".log").write_text("")
    Path(case["calls"] + ".secrets").write_text("")
    shutil.rmtree(case["calls"] + ".secrets.d", ignore_errors=True)
    # The unit's settled record (src/settled.py), as its steady state's whole update-status
    # left it (_RECORDS), or none for a case measured without it.
    record = charm_dir / SETTLED_RECORD
    kept = _RECORDS.get(case["mount_snapshot"])
    if kept is not None and case.get("settled", True):
        record.write_text(kept)
    else:
        record.unlink(missing_ok=True)
    if case.get("verify_due"):
        # The leader's backend check (postgres.verification) is due: its marker is gone.
        (charm_dir / ".backend-verified").unlink(missing_ok=True)
    if case.get("no_pyc"):
        _drop_pycache(charm_dir)


def _log_level(line: str) -> str:
    """``--log-level DEBUG -- text`` → ``DEBUG``."""
    parts = line.split()
    if "--log-level" in parts and parts.index("--log-level") + 1 < len(parts):
        return parts[parts.index("--log-level") + 1]
    return "INFO"


def _env(job: dict[str, Any], case: dict[str, Any], charm: dict[str, Any]) -> dict[str, str]:
    env = {
        "PATH": f"{job['tools_bin']}:/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "JUJU_CHARM_DIR": charm["dir"],
        "JUJU_UNIT_NAME": case["unit"],
        "JUJU_MODEL_NAME": job["model_name"],
        "JUJU_MODEL_UUID": job["model_uuid"],
        "JUJU_VERSION": job["juju_version"],
        "JUJU_DISPATCH_PATH": f"hooks/{case['hook']}",
        "BENCH_JUJU_MODEL": case["model"],
        "BENCH_JUJU_REPLAY": case["replay"],
        "BENCH_JUJU_CALLS": case["calls"],
        "BENCH_PYTHON": sys.executable,
    }
    env.update(case.get("env", {}))
    return env


def _ensure_mount(job: dict[str, Any]) -> None:
    """Bind the stand-in's directory on ``/charm`` (again, if the mount went).

    ``/charm`` is created on the host when missing and removed by whichever run created it; a
    run of another worktree that removes it detaches our mount (Linux detaches a mount whose
    mountpoint is removed in another namespace). The socket file itself lives in our
    temporary directory, so binding it again is enough.
    """
    socket = Path("/charm/containers/pgbouncer/pebble.socket")
    if socket.exists():
        return
    Path("/charm").mkdir(mode=0o755, exist_ok=True)
    subprocess.run(["mount", "--bind", str(job["charm_mount"]), "/charm"], check=True)


def _run_once(
    job: dict[str, Any],
    case: dict[str, Any],
    charm: dict[str, Any],
    state: PebbleStandIn,
    importtime: bool = False,
) -> dict[str, Any]:
    _prepare_run(job, case, charm)
    _ensure_mount(job)
    state.reset()
    env = _env(job, case, charm)
    if importtime:
        env["PYTHONPROFILEIMPORTTIME"] = "1"
    err_path = Path(case["calls"]).with_suffix(".stderr")
    with err_path.open("wb") as err:
        out = subprocess.run(
            [job["launch"], charm["dir"]],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            check=True,
            timeout=300,
        )
    # The launcher's line is the last one; the hook's own stdout (none expected) comes first.
    wall_ns, rss_kib, code = out.stdout.decode().split()[-3:]
    stderr = err_path.read_text(errors="replace")
    calls = Path(case["calls"]).read_text().splitlines()
    by_tool = Counter(c.split()[0] for c in calls)
    log_lines = Path(case["calls"] + ".log").read_text().splitlines()
    result: dict[str, Any] = {
        "wall_ms": int(wall_ns) / 1e6,
        "rss_mib": int(rss_kib) / 1024,
        "exit": int(code),
        "tool_calls": len(calls),
        "tool_misses": sum(1 for c in calls if c.endswith(" miss")),
        "tools": dict(by_tool),
        "pebble_calls": sum(state.calls.values()),
        "pebble": dict(state.calls),
        "status_before": case.get("status_before", ""),
        "log_levels": dict(Counter(_log_level(line) for line in log_lines)),
        "status": (Path(case["calls"] + ".status").read_text().strip().splitlines() or [""])[-1],
    }
    if importtime:
        modules = [
            line.split("|")[-1].strip()
            for line in stderr.splitlines()
            if line.startswith("import time:") and "|" in line and "imported package" not in line
        ]
        result["modules"] = len(modules)
        result["psycopg"] = any(m.split(".")[0] == "psycopg" for m in modules)
        result["pydantic"] = any(m.split(".")[0] == "pydantic" for m in modules)
        result["dpcharmlibs"] = any(m.split(".")[0] == "dpcharmlibs" for m in modules)
        result["cryptography"] = any(m.split(".")[0] == "cryptography" for m in modules)
    else:
        text = stderr.strip()
        result["stderr"] = text[-600:]
        result["warning_on_stderr"] = "Warning" in text
    if int(code) != 0:
        result["error"] = (
            f"exit {code}; stderr ends: {stderr[-3000:]}; log ends: {log_lines[-20:]}"
        )
    return result


def main(argv: list[str]) -> int:
    """Run the job; write per-run figures to the output file."""
    job = json.loads(Path(argv[1]).read_text())
    _ensure_mount(job)
    socket = Path("/charm/containers/pgbouncer/pebble.socket")
    states = {
        case["name"]: PebbleStandIn(
            mounts={case["mount_location"]: Path(case["mount_work"])},
            layers=case["layers"],
            statuses=case["services"],
        )
        for case in job["cases"]
    }
    for state in states.values():
        state.snapshot()
    first = next(iter(states.values()))
    server = PebbleSocket(socket, first)
    results: dict[str, Any] = {"runs": [], "profiles": []}
    try:
        charms = job["charms"]
        # Warm-up: fills the hook tools' replay files and the .pyc caches; not measured.
        for case in job["cases"]:
            server.state = states[case["name"]]
            for charm in charms:
                run = _run_once(job, case, charm, states[case["name"]])
                if run["exit"] != 0:
                    raise RuntimeError(f"{charm['name']} {case['name']}: {run.get('error')}")
                record = Path(charm["dir"]) / SETTLED_RECORD
                steady = case["hook"] == "update-status" and not case.get("verify_due")
                if charm["name"] == "ours" and steady and record.exists():
                    _RECORDS.setdefault(case["mount_snapshot"], record.read_text())
        for case in job["cases"]:
            server.state = states[case["name"]]
            for charm in charms:
                profile = _run_once(job, case, charm, states[case["name"]], importtime=True)
                results["profiles"].append(
                    {"case": case["name"], "charm": charm["name"], **profile}
                )
        for rnd in range(job["rounds"]):
            order = charms if rnd % 2 == 0 else list(reversed(charms))
            for case in job["cases"]:
                if case.get("rounds") is not None and rnd >= case["rounds"]:
                    continue
                server.state = states[case["name"]]
                for charm in order:
                    run = _run_once(job, case, charm, states[case["name"]])
                    if run["exit"] != 0:
                        raise RuntimeError(f"{charm['name']} {case['name']}: {run.get('error')}")
                    results["runs"].append(
                        {"case": case["name"], "charm": charm["name"], "round": rnd, **run}
                    )
    finally:
        server.close()
        Path(argv[2]).write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main(sys.argv))
