"""Hook cost on Juju's real path: ``dispatch`` → ``python3 src/charm.py`` → ``ops.main``.

The charm directory is built as charmcraft packs it (``src/``, ``metadata.yaml`` and
``config.yaml`` from ``charmcraft.yaml``, the runtime ``requirements.txt`` installed into
``venv/``, charmcraft's ``dispatch`` script), beside the floor charm (``bench/floor_charm``, ops
only). Each hook runs as a fresh process with stand-in hook tools (:mod:`.tools`) and a stand-in
Pebble API on a unix socket (:mod:`harness.pebble_socket`), from states prepared by driving our charm through its
life on a real PostgreSQL (:func:`bench.hooks._prepare`). Ours and the floor interleaved, every
case, ``settings.jujupath_runs`` rounds; median and range of wall time and of peak RSS.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench import ROOT
from bench.jujupath import tools
from bench.settings import Settings

DISPATCH = """#!/bin/sh
JUJU_DISPATCH_PATH="${JUJU_DISPATCH_PATH:-$0}" PYTHONPATH=lib:venv /usr/bin/env python3 ./src/charm.py
"""
"""charmcraft's ``dispatch`` for an ops charm (the ``charm`` plugin)."""

CACHE = ROOT / ".build" / "bench-charm-venvs"
UNIT_APP = "pgbouncer-k8s"


def _venv(requirements: list[str]) -> Path:
    """``pip install --target`` of ``requirements``, cached by their text."""
    digest = hashlib.sha256("\n".join(requirements).encode()).hexdigest()[:16]
    target = CACHE / digest
    if not (target / ".complete").exists():
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "--no-compile",
                "--target",
                str(target),
                *requirements,
            ],
            check=True,
            timeout=600,
        )
        (target / ".complete").write_text("")
    return target


def _requirements(path: Path) -> list[str]:
    return [
        line.strip()
        for line in path.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


def build_charm(dest: Path, source_root: Path, requirements: list[str]) -> Path:
    """Lay a charm out as charmcraft packs it, in ``dest``.

    Args:
        dest: the charm directory to create.
        source_root: holds ``charmcraft.yaml`` and ``src/``.
        requirements: what goes into ``venv/``.
    """
    dest.mkdir(parents=True)
    shutil.copytree(
        source_root / "src", dest / "src", ignore=shutil.ignore_patterns("__pycache__")
    )
    meta = yaml.safe_load((source_root / "charmcraft.yaml").read_text())
    config = meta.pop("config", None)
    actions = meta.pop("actions", None)
    for key in ("parts", "platforms", "base", "bases", "type", "links"):
        meta.pop(key, None)
    (dest / "metadata.yaml").write_text(yaml.safe_dump(meta))
    if config:
        (dest / "config.yaml").write_text(yaml.safe_dump(config))
    if actions:  # charmcraft packs them as actions.yaml; ops defines the action events from it
        (dest / "actions.yaml").write_text(yaml.safe_dump(actions))
    shutil.copytree(_venv(requirements), dest / "venv", ignore=shutil.ignore_patterns(".complete"))
    (dest / "dispatch").write_text(DISPATCH)
    (dest / "dispatch").chmod(0o755)
    (dest / "src" / "charm.py").chmod(0o755)
    return dest


def _defaults(charm_root: Path) -> dict[str, Any]:
    meta = yaml.safe_load((charm_root / "charmcraft.yaml").read_text())
    return {k: v.get("default") for k, v in meta["config"]["options"].items()}


def model_of(state: Any, unit: str, app: str) -> dict[str, Any]:
    """The stand-in hook tools' view of a Scenario state, as JSON-able data."""
    from ops import testing

    relations = []
    for rel in state.relations:
        if isinstance(rel, testing.PeerRelation):
            remote_app = app
            remote_units = {f"{app}/{i}": dict(d) for i, d in rel.peers_data.items()}
            remote_app_data: dict[str, str] = dict(rel.local_app_data)
        else:
            remote_app = rel.remote_app_name
            remote_units = {f"{remote_app}/{i}": dict(d) for i, d in rel.remote_units_data.items()}
            remote_app_data = dict(rel.remote_app_data)
        relations.append(
            {
                "id": rel.id,
                "endpoint": rel.endpoint,
                "remote_app": remote_app,
                "remote_units": remote_units,
                "remote_app_data": remote_app_data,
                "local_app_data": dict(rel.local_app_data),
                "local_unit_data": dict(rel.local_unit_data),
            }
        )
    secrets = [
        {
            "id": s.id,
            "label": s.label,
            "owner": {"app": "application", "unit": "unit"}.get(s.owner or ""),
            "content": dict(s.tracked_content),
            "revision": 1,
        }
        for s in state.secrets
    ]
    return {
        "unit": unit,
        "app": app,
        "model_uuid": state.model.uuid,
        "leader": state.leader,
        "config": dict(state.config),
        "relations": relations,
        "secrets": secrets,
        "status": {
            "unit": [state.unit_status.name, state.unit_status.message],
            "app": [state.app_status.name, state.app_status.message],
        },
        "opened_ports": [f"{p.port}/{p.protocol}" for p in state.opened_ports],
    }


def _unit_state_db(state: Any, path: Path) -> None:
    from ops.storage import SQLiteStorage

    store = SQLiteStorage(path)
    for stored in state.stored_states:
        store.save_snapshot(stored._handle_path, dict(stored.content))
    store.commit()
    store.close()


@dataclass
class Case:
    """One measured hook: what Juju would run, on which unit, in which steady state."""

    name: str
    hook: str
    leader: bool
    clients: int
    env: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    rounds: int | None = None
    verify_due: bool = False
    settled: bool = True
    """Whether the unit keeps the record of its last clean reconcile (src/settled.py), as a
    unit in Juju does between hooks; without it, the hook reconciles in full."""


RELOAD_ONLY_CHANGE = {"server_idle_timeout": 300}
"""The config-changed case's change: one option PgBouncer applies by a reload (600 → 300)."""


def cases(client_relation: tuple[int, str], clients: int, rounds: int | None = None) -> list[Case]:
    """The steady-state hooks measured (issue 23), in the order they run in each round."""
    rel_id, remote_app = client_relation
    label = "" if clients == 10 else f" [{clients} clients]"
    return [
        Case(f"update-status (leader){label}", "update-status", True, clients, rounds=rounds),
        Case(
            f"update-status (leader), no settled record{label}",
            "update-status",
            True,
            clients,
            rounds=rounds,
            settled=False,
        ),
        Case(
            f"update-status (leader), backend check due{label}",
            "update-status",
            True,
            clients,
            rounds=rounds,
            verify_due=True,
        ),
        Case(
            f"config-changed, one reload-only option (leader){label}",
            "config-changed",
            True,
            clients,
            config=RELOAD_ONLY_CHANGE,
            rounds=rounds,
        ),
        Case(
            f"client relation-changed, nothing new (leader){label}",
            "database-relation-changed",
            True,
            clients,
            env={
                "JUJU_RELATION": "database",
                "JUJU_RELATION_ID": f"database:{rel_id}",
                "JUJU_REMOTE_APP": remote_app,
                "JUJU_REMOTE_UNIT": f"{remote_app}/0",
            },
            rounds=rounds,
        ),
        Case(f"update-status (follower){label}", "update-status", False, clients, rounds=rounds),
        Case(
            f"config-changed, nothing changed (follower){label}",
            "config-changed",
            False,
            clients,
            rounds=rounds,
        ),
    ]


@dataclass
class JujuPathResult:
    """Per case and charm: every run and the import profile."""

    runs: list[dict[str, Any]]
    profiles: list[dict[str, Any]]
    rounds: int

    def values(self, case: str, charm: str, attr: str) -> list[float]:
        """``attr`` of every measured run of ``charm`` in ``case``."""
        return [r[attr] for r in self.runs if r["case"] == case and r["charm"] == charm]

    def median(self, case: str, charm: str, attr: str) -> float:
        """Median of :meth:`values` (0 when none)."""
        vals = self.values(case, charm, attr)
        return statistics.median(vals) if vals else 0.0

    def span(self, case: str, charm: str, attr: str, digits: int = 0) -> str:
        """``median (min-max)``."""
        vals = self.values(case, charm, attr)
        if not vals:
            return "n/a"
        return (
            f"{statistics.median(vals):.{digits}f} ({min(vals):.{digits}f}-{max(vals):.{digits}f})"
        )

    def ratios(self, case: str) -> list[float]:
        """Ours over the floor within each round (the two runs are seconds apart)."""
        ours = {
            r["round"]: r["wall_ms"]
            for r in self.runs
            if r["case"] == case and r["charm"] == "ours"
        }
        floor = {
            r["round"]: r["wall_ms"]
            for r in self.runs
            if r["case"] == case and r["charm"] == "floor"
        }
        return [ours[k] / floor[k] for k in sorted(ours) if floor.get(k)]

    def ratio_span(self, case: str) -> str:
        """Per-round ratio: ``median (min-max)``."""
        vals = self.ratios(case)
        if not vals:
            return "n/a"
        return f"{statistics.median(vals):.2f} ({min(vals):.2f}-{max(vals):.2f})"

    def cases(self) -> list[str]:
        """Case names in run order."""
        return list(dict.fromkeys(r["case"] for r in self.runs))

    def profile(self, case: str, charm: str) -> dict[str, Any]:
        """The ``-X importtime`` run of ``charm`` in ``case``."""
        return next(p for p in self.profiles if p["case"] == case and p["charm"] == charm)

    def tools(self, case: str, charm: str = "ours") -> dict[str, int]:
        """Hook-tool calls by tool in the last measured run (the same in every run)."""
        last = [r for r in self.runs if r["case"] == case and r["charm"] == charm][-1]
        return dict(sorted(last["tools"].items(), key=lambda kv: (-kv[1], kv[0])))


def run(settings: Settings, workdir: Path) -> JujuPathResult:
    """Prepare the steady states, build both charms, run the interleaved rounds."""
    from bench.jujupath.steady import close, prepare

    tmp = workdir / "jujupath"
    tmp.mkdir(parents=True, exist_ok=True)
    launch = tmp / "launch"
    subprocess.run(
        ["gcc", "-O2", "-o", str(launch), str(Path(__file__).parent / "launch.c")], check=True
    )
    ours = build_charm(tmp / "charm-ours", ROOT, _requirements(ROOT / "requirements.txt"))
    floor_root = ROOT / "bench" / "floor_charm"
    floor = build_charm(tmp / "charm-floor", floor_root, ["ops==3.9.0"])
    bindir = tmp / "bin"
    tools.install(bindir)
    counts = (10, 20) if settings.jujupath_more_rounds else (10,)
    snapshots, owned, mount_location = prepare(tmp, counts)
    created_charm_dir = False
    try:
        job_cases = []
        defaults = _defaults(ROOT)
        model_name, model_uuid = "", ""
        for count in counts:
            leader = next(s for s in snapshots if s.clients == count and s.leader)
            follower = next(s for s in snapshots if s.clients == count and not s.leader)
            rounds = None if count == 10 else settings.jujupath_more_rounds
            for case in cases(leader.client_relations[0], count, rounds):
                snap = leader if case.leader else follower
                state = snap.state
                # The charm marks what it creates in PostgreSQL with the model's uuid: keep the
                # one the states were prepared with.
                model_name, model_uuid = state.model.name, state.model.uuid
                unit = f"{snap.app_name}/{snap.unit_id}"
                model = model_of(state, unit, snap.app_name)
                model["config"] = {**defaults, **model["config"], **case.config}
                case_dir = tmp / f"case{len(job_cases)}"
                (case_dir / "replay").mkdir(parents=True)
                (case_dir / "model.json").write_text(json.dumps(model))
                (case_dir / "model.json").chmod(0o600)
                _unit_state_db(state, case_dir / "unit-state.db")
                container = state.get_container("pgbouncer")
                status = state.unit_status
                job_cases.append(
                    {
                        "name": case.name,
                        "hook": case.hook,
                        "unit": unit,
                        # Each deployment has its model: the charm marks what it creates
                        # in PostgreSQL with the model's uuid.
                        "env": {
                            **case.env,
                            "JUJU_MODEL_NAME": state.model.name,
                            "JUJU_MODEL_UUID": state.model.uuid,
                        },
                        "rounds": case.rounds,
                        "verify_due": case.verify_due,
                        "settled": case.settled,
                        "status_before": f"{status.name} -- {status.message}",
                        "model": str(case_dir / "model.json"),
                        "replay": str(case_dir / "replay"),
                        "calls": str(case_dir / "calls.log"),
                        "unit_state_db": str(case_dir / "unit-state.db"),
                        "mount_location": mount_location,
                        "mount_snapshot": str(snap.files),
                        "mount_work": str(case_dir / "mount"),
                        "layers": {k: v.to_dict() for k, v in container.layers.items()},
                        "services": {k: v.value for k, v in container.service_statuses.items()},
                    }
                )
        charm_mount = tmp / "charm-mount"
        (charm_mount / "containers" / "pgbouncer").mkdir(parents=True)
        job = {
            "launch": str(launch),
            "tools_bin": str(bindir),
            "model_name": model_name,
            "model_uuid": model_uuid,
            "juju_version": "3.6.2",
            "charm_mount": str(charm_mount),
            "charms": [{"name": "ours", "dir": str(ours)}, {"name": "floor", "dir": str(floor)}],
            "cases": job_cases,
            "rounds": settings.jujupath_runs,
        }
        (tmp / "job.json").write_text(json.dumps(job))
        # ops looks for Pebble at /charm/containers/<name>/pebble.socket: the runner bind-mounts
        # a temporary directory there in its own mount namespace. The mount point must exist.
        charm_path = Path("/charm")
        if not charm_path.exists():
            charm_path.mkdir(mode=0o755)
            created_charm_dir = True
        res = subprocess.run(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                sys.executable,
                "-m",
                "bench.jujupath.runner",
                str(tmp / "job.json"),
                str(tmp / "out.json"),
            ],
            cwd=ROOT,
            timeout=3600,
            check=False,
        )
        out = json.loads((tmp / "out.json").read_text()) if (tmp / "out.json").exists() else {}
        if res.returncode != 0:
            raise RuntimeError(f"runner exited {res.returncode}")
    finally:
        if created_charm_dir:
            Path("/charm").rmdir()
        close(owned)
    result = JujuPathResult(out["runs"], out["profiles"], settings.jujupath_runs)
    for case in result.cases():
        print(
            f"  {case[:56]:56s} ours {result.span(case, 'ours', 'wall_ms')} ms | floor"
            f" {result.span(case, 'floor', 'wall_ms')} ms | ratio {result.ratio_span(case)}"
            f" | {sum(result.tools(case).values())} calls",
            flush=True,
        )
    return result


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "n/a"


WRITING_TOOLS = ("relation-set", "secret-add", "secret-set", "secret-grant", "secret-remove")
"""Hook tools that write to a databag or a secret."""
WRITING_PEBBLE = ("POST /v1/files", "POST /v1/layers", "POST /v1/services", "POST /v1/signals")
"""Pebble calls that change the container: files, the plan, services, signals."""


def _calls_cell(counts: dict[str, int]) -> str:
    return ", ".join(f"{tool} {n}" for tool, n in counts.items()) or "none"


def section(result: JujuPathResult) -> list[str]:
    """Markdown of the production-path hook table."""
    lines = [
        "## 4a. Hook cost on Juju's real path (dispatch → `src/charm.py` → `ops.main`)",
        "",
        "The steady state of issue 23: a two-unit application on a real PostgreSQL, the backend"
        " related (credentials in a secret), 10 client applications related and answered, every"
        " unit settled by update-status rounds (status active); each hook starts from that state"
        " again, so nothing is new and nothing drifted in the catalog. Charm directory as"
        " charmcraft packs it (runtime `requirements.txt` in `venv/`, `src/`, `dispatch`); each"
        " hook a fresh process through `dispatch`, stand-in hook tools on `PATH` (one `sh`, and"
        " for a getter `sha1sum` + `cat`: about 1 ms a call here) and a stand-in Pebble API on"
        f" `/charm/containers/pgbouncer/pebble.socket` (`bench/jujupath/`). {result.rounds} rounds,"
        " ours and the floor (`bench/floor_charm`, ops only, same hook tools) interleaved, the"
        " order reversed every other round; wall and peak RSS median (min-max); **ratio** = ours"
        " / floor within each round, median (min-max). Peak RSS from `wait4` of `dispatch` (the"
        " charm's python3 included) through a 1 MiB C launcher. Rows marked [20 clients] run on"
        " the same deployment with 10 more clients, fewer rounds: they show whether a hook's"
        " calls grow with the clients.",
        "",
        "| hook | ours wall (ms) | floor wall (ms) | ratio | ours peak RSS (MiB) | floor peak RSS (MiB) | hook-tool calls ours / floor | Pebble calls | writes (databag, secret, file, plan, signal) | status (ours) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for case in result.cases():
        last = [r for r in result.runs if r["case"] == case and r["charm"] == "ours"][-1]
        misses = sum(result.values(case, "ours", "tool_misses"))
        ours_tools, floor_tools = result.tools(case), result.tools(case, "floor")
        writes = {t: n for t, n in ours_tools.items() if t in WRITING_TOOLS}
        writes |= {c: n for c, n in last["pebble"].items() if c in WRITING_PEBBLE}
        status = last.get("status", "").replace("--application=False ", "").replace("|", "/")
        same = "unchanged" if status in ("", last["status_before"]) else f"**{status[:70]}**"
        stderr = " (warning on stderr)" if last.get("warning_on_stderr") else ""
        lines.append(
            f"| {case} | {result.span(case, 'ours', 'wall_ms')} |"
            f" {result.span(case, 'floor', 'wall_ms')} | {result.ratio_span(case)} |"
            f" {result.span(case, 'ours', 'rss_mib', 1)} | {result.span(case, 'floor', 'rss_mib', 1)}"
            f" | {sum(ours_tools.values())} / {sum(floor_tools.values())}"
            f"{f' ({misses} replay misses)' if misses else ''} | {last['pebble_calls']} |"
            f" {_calls_cell(writes)} | {same}{stderr} |"
        )
    lines += [
        "",
        "Hook-tool calls of our charm per hook, by tool (every measured run made the same calls):",
        "",
        "| hook | calls |",
        "|---|---|",
        *[f"| {case} | {_calls_cell(result.tools(case))} |" for case in result.cases()],
        "",
        "Import profile of each hook (`PYTHONPROFILEIMPORTTIME=1`, one extra run each, not"
        " timed): modules imported, and whether psycopg, pydantic, dpcharmlibs and cryptography"
        " were loaded.",
        "",
        "| hook | ours modules | floor modules | psycopg | pydantic | dpcharmlibs | cryptography |",
        "|---|---:|---:|---|---|---|---|",
    ]
    for case in result.cases():
        p, fl = result.profile(case, "ours"), result.profile(case, "floor")
        yes = {True: "**loaded**", False: "no"}
        lines.append(
            f"| {case} | {p['modules']} | {fl['modules']} | {yes[p['psycopg']]} |"
            f" {yes[p['pydantic']]} | {yes[p['dpcharmlibs']]} | {yes[p.get('cryptography', False)]} |"
        )
    return lines
