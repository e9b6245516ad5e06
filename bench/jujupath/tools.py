"""Stand-in Juju hook tools: ``relation-get``, ``config-get``, ``is-leader``, ``juju-log``, ...

In Juju each hook tool is a small process that asks the unit agent over a socket. Here each is a
``/bin/sh`` script on ``PATH`` (written by :func:`install`) that

- for a *setter* (``juju-log``, ``status-set``, ``relation-set``, ...) notes the call and exits 0;
- for a *getter* looks its answer up in a replay directory, keyed by the SHA-1 of its argv, and
  prints it; on a miss it runs this module (``python3 tools.py <tool> <args>``), which answers
  from the model file (the Scenario state before the hook, as JSON) and stores the answer.

The first run of each hook (a warm-up, not measured) fills the replay directory; the measured
runs then pay one ``sh`` + ``sha1sum`` + ``cat`` per getter, a few ms, about what a real hook
tool costs and the same for both charms. Misses during measured runs are counted and reported.
Every call is appended to ``$BENCH_JUJU_CALLS`` (tool name only: no argument, so no secret);
``status-set``'s arguments go to ``$BENCH_JUJU_CALLS.status``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

SETTERS = (
    "juju-log",
    "status-set",
    "application-version-set",
    "relation-set",
    "secret-set",
    "secret-grant",
    "secret-revoke",
    "secret-remove",
    "open-port",
    "close-port",
    "state-set",
    "state-delete",
    "juju-reboot",
)
GETTERS = (
    "is-leader",
    "config-get",
    "relation-ids",
    "relation-list",
    "relation-get",
    "relation-model-get",
    "secret-get",
    "secret-info-get",
    "secret-ids",
    "status-get",
    "opened-ports",
    "network-get",
    "goal-state",
    "state-get",
    "storage-list",
    "leader-get",
)

_SETTER_SCRIPT = """#!/bin/sh
printf '%s\\n' "{tool}" >> "$BENCH_JUJU_CALLS"
while read -r _ 2>/dev/null; do :; done
exit 0
"""

_JUJU_LOG_SCRIPT = """#!/bin/sh
printf '%s\\n' "juju-log" >> "$BENCH_JUJU_CALLS"
printf '%s\\n' "$*" >> "$BENCH_JUJU_CALLS.log"
exit 0
"""

_STATUS_SET_SCRIPT = """#!/bin/sh
printf '%s\\n' "status-set" >> "$BENCH_JUJU_CALLS"
printf '%s\\n' "$*" >> "$BENCH_JUJU_CALLS.status"
exit 0
"""

_GETTER_SCRIPT = """#!/bin/sh
k=$(printf '%s\\037' "{tool}" "$@" | sha1sum)
f="$BENCH_JUJU_REPLAY/${{k%% *}}"
if [ -f "$f" ]; then
  printf '%s\\n' "{tool}" >> "$BENCH_JUJU_CALLS"
  exec cat "$f"
fi
if [ -f "$f.err" ]; then
  printf '%s\\n' "{tool}" >> "$BENCH_JUJU_CALLS"
  cat "$f.err" >&2
  exit 1
fi
printf '%s miss\\n' "{tool}" >> "$BENCH_JUJU_CALLS"
exec "$BENCH_PYTHON" "{module}" "{tool}" "$@"
"""

_SECRET_ADD_SCRIPT = """#!/bin/sh
# A new secret's id follows from its label, so that every run (and the replay) sees the same id.
printf '%s\\n' "secret-add" >> "$BENCH_JUJU_CALLS"
label=""; prev=""
for a in "$@"; do [ "$prev" = "--label" ] && label="$a"; prev="$a"; done
k=$(printf '%s' "$label" | sha1sum)
id="secret:$(printf '%s' "$k" | cut -c1-20)"
printf '%s %s\\n' "$id" "$label" >> "$BENCH_JUJU_CALLS.secrets"
# Keep the content (ops passes each value as key#file=path) for secret-get later in the hook.
d="$BENCH_JUJU_CALLS.secrets.d/${id#secret:}"
mkdir -p "$d"
for a in "$@"; do
  case "$a" in *"#file="*) cp "${a#*#file=}" "$d/${a%%#file=*}";; esac
done
printf '%s\\n' "$id"
"""


def key(tool: str, args: list[str]) -> str:
    """The replay key of one call: SHA-1 of the tool and its arguments, each ended by 0x1f."""
    return hashlib.sha1(("".join(f"{a}\x1f" for a in (tool, *args))).encode()).hexdigest()  # noqa: S324 - a key, not security


def install(bindir: Path) -> None:
    """Write every tool script into ``bindir`` (put it first on the hook's ``PATH``)."""
    bindir.mkdir(parents=True, exist_ok=True)
    module = Path(__file__).resolve()
    for tool in SETTERS:
        (bindir / tool).write_text(_SETTER_SCRIPT.format(tool=tool))
    (bindir / "secret-add").write_text(_SECRET_ADD_SCRIPT)
    # The unit status the hook set (never secret) is kept, so a report can show what it did.
    (bindir / "status-set").write_text(_STATUS_SET_SCRIPT)
    # The log lines (level and text) are kept, to see what fills the model log.
    (bindir / "juju-log").write_text(_JUJU_LOG_SCRIPT)
    for tool in GETTERS:
        (bindir / tool).write_text(_GETTER_SCRIPT.format(tool=tool, module=module))
    for path in bindir.iterdir():
        path.chmod(0o755)


def _relation(model: dict[str, Any], ref: str) -> dict[str, Any]:
    rel_id = int(ref.rsplit(":", 1)[-1])
    for rel in model["relations"]:
        if rel["id"] == rel_id:
            return rel
    raise LookupError(f"relation {rel_id} not found")


def _opts(args: list[str]) -> tuple[dict[str, str | bool], list[str]]:
    """``--format=json -r x --app a b`` → ({format: json, r: x, app: True}, [a, b])."""
    with_value = {"-r", "--label", "--revision", "--relation", "--unit", "--owner", "-s"}
    opts: dict[str, str | bool] = {}
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in with_value:
            opts[arg.lstrip("-")] = args[i + 1]
            i += 2
            continue
        if arg.startswith("--") and "=" in arg:
            name, value = arg[2:].split("=", 1)
            opts[name] = value
        elif arg.startswith("--"):
            opts[arg[2:]] = True
        else:
            rest.append(arg)
        i += 1
    return opts, rest


def _added_secrets() -> list[dict[str, Any]]:
    """Secrets ``secret-add`` created earlier in this hook."""
    path = Path(os.environ.get("BENCH_JUJU_CALLS", "/nonexistent") + ".secrets")
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            sid, _, label = line.partition(" ")
            store = Path(f"{path}.d") / sid.removeprefix("secret:")
            content = {f.name: f.read_text() for f in store.iterdir()} if store.is_dir() else {}
            out.append(
                {
                    "id": sid,
                    "label": label,
                    "owner": "application",
                    "content": content,
                    "revision": 1,
                }
            )
    return out


def _secret(model: dict[str, Any], opts: dict[str, Any], rest: list[str]) -> dict[str, Any]:
    for secret in [*model["secrets"], *_added_secrets()]:
        if rest and secret["id"].split(":")[-1] == rest[0].split(":")[-1]:
            return secret
        if not rest and opts.get("label") and secret.get("label") == opts["label"]:
            return secret
    raise LookupError("secret not found")


def answer(model: dict[str, Any], tool: str, args: list[str]) -> Any:
    """What ``tool args`` prints (as JSON) for the unit described by ``model``.

    Raises:
        LookupError: the tool names something the model does not hold.
    """
    opts, rest = _opts(args)
    if tool == "is-leader":
        return model["leader"]
    if tool == "config-get":
        return model["config"][rest[0]] if rest else model["config"]
    if tool == "relation-ids":
        return [
            f"{r['endpoint']}:{r['id']}" for r in model["relations"] if r["endpoint"] == rest[0]
        ]
    if tool == "relation-list":
        rel = _relation(model, str(opts["r"]))
        return rel["remote_app"] if opts.get("app") else sorted(rel["remote_units"])
    if tool == "relation-get":
        rel = _relation(model, str(opts["r"]))
        wanted_key, who = (rest[0], rest[1]) if len(rest) >= 2 else (rest[0], model["unit"])
        if who == model["unit"]:
            data = rel["local_unit_data"]
        elif who == model["app"]:
            data = rel["local_app_data"]
        elif who == rel["remote_app"]:
            data = rel["remote_app_data"]
        else:
            data = rel["remote_units"][who]
        return data if wanted_key == "-" else data.get(wanted_key)
    if tool == "relation-model-get":
        return {"uuid": model["model_uuid"]}
    if tool == "secret-get":
        return _secret(model, opts, rest)["content"]
    if tool == "secret-info-get":
        secret = _secret(model, opts, rest)
        return {
            secret["id"]: {
                "revision": secret["revision"],
                "label": secret.get("label") or "",
                "owner": secret.get("owner") or "application",
                "rotation": "never",
            }
        }
    if tool == "secret-ids":
        return [s["id"] for s in model["secrets"] if s.get("owner")]
    if tool == "status-get":
        status = model["status"]["app" if opts.get("application") == "true" else "unit"]
        entry = {"status": status[0], "message": status[1], "status-data": {}}
        if opts.get("application") == "true":
            return {"application-status": entry, "units": {}}
        return entry
    if tool == "opened-ports":
        return model["opened_ports"]
    if tool == "state-get":
        return {}
    if tool == "goal-state":
        return {"units": {}, "relations": {}}
    raise LookupError(f"{tool} is not answered by the stand-in")


def main(argv: list[str]) -> int:
    """Answer one getter call from the model, store it for replay, print it."""
    tool, args = argv[1], argv[2:]
    model = json.loads(Path(os.environ["BENCH_JUJU_MODEL"]).read_text())
    path = Path(os.environ["BENCH_JUJU_REPLAY"]) / key(tool, args)
    try:
        result = answer(model, tool, args)
    except (LookupError, KeyError, IndexError) as exc:
        # Juju's wording ("ERROR ... not found") is what ops turns into its own exceptions.
        message = f"ERROR {tool}: {exc}\n"
        path.with_suffix(".err").write_text(message)
        sys.stderr.write(message)
        return 1
    text = json.dumps(result) + "\n"
    path.write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
