"""The workload image's contract (docs/image.md), checked in one exec at ``pebble-ready``.

The charm relies on a few things in the ``pgbouncer`` container: a ``postgres`` user that is not
root, a base directory that user can write, ``pgbouncer`` on PATH and at least
:data:`~state.charm_state.MIN_PGBOUNCER_VERSION`. :data:`CONTRACT_SCRIPT` checks all of them in one POSIX ``sh`` run as the
workload user, so the status can name every missing piece at once instead of the first failure
showing up later as a crash loop. The script prints one ``missing <what>`` line per failed
item, then a marker line, then PgBouncer's own ``--version`` output: nothing the binary prints
can pass for a ``missing`` line or hide one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import PurePosixPath

import ops
from ops import pebble

from pgbouncer.exporter import EXPORTER_COMMAND
from pgbouncer.go_exporter import GO_EXPORTER_COMMAND
from pgbouncer.plan import WORKLOAD_USER
from pgbouncer.slots import DEFAULT_BASE_DIR
from pgbouncer.workload import version_from_output as parse_version
from state.charm_state import MIN_PGBOUNCER_VERSION, UNKNOWN_VERSION
from state.charm_state import parse_version as version_tuple

VERSION_MARKER = "--- pgbouncer --version ---"

CONTRACT_SCRIPT = f"""\
missing() {{ printf 'missing %s\\n' "$1"; }}
[ "$(id -un 2>/dev/null)" = {WORKLOAD_USER} ] || missing "user {WORKLOAD_USER}"
[ "$(id -u 2>/dev/null)" != 0 ] || missing "a non-root uid"
for dir in "$@"; do
  [ -d "$dir" ] && [ -w "$dir" ] && [ -x "$dir" ] || missing "writable $dir"
done
command -v pgbouncer >/dev/null 2>&1 || missing "pgbouncer on PATH"
command -v {EXPORTER_COMMAND} >/dev/null 2>&1 || printf 'absent %s\\n' {EXPORTER_COMMAND}
command -v {GO_EXPORTER_COMMAND} >/dev/null 2>&1 || printf 'absent %s\\n' {GO_EXPORTER_COMMAND}
printf '%s\\n' '{VERSION_MARKER}'
pgbouncer --version 2>&1
exit 0
"""
"""Arguments: the directories the workload user must be able to write."""


@dataclass(frozen=True)
class ImageReport:
    """What the contract script found.

    Attributes:
        missing: the failed items, in the script's order (``"pgbouncer on PATH"`` …).
        version: PgBouncer's version (``"1.21.0"``), or None when it did not say.
        absent: optional pieces the image does not carry (``"pgbouncer-exporter"``: no metrics).
    """

    missing: tuple[str, ...]
    version: str | None
    absent: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImageCheck:
    """The outcome of :func:`check_image`, for the charm.

    Attributes:
        problems: every way the image breaks the contract (empty when it fits).
        version: PgBouncer's version, when the image's ``pgbouncer --version`` named one.
        ran: whether ``pgbouncer --version`` ran (the script got to it with ``pgbouncer`` on
            PATH): a None ``version`` then means the binary named none.
        absent: optional pieces the image lacks (see :class:`ImageReport`).
    """

    problems: tuple[str, ...]
    version: str | None = None
    ran: bool = False
    absent: tuple[str, ...] = ()


def contract_command(base_dir: str = DEFAULT_BASE_DIR) -> list[str]:
    """The argv that runs :data:`CONTRACT_SCRIPT` for ``base_dir``."""
    return ["sh", "-c", CONTRACT_SCRIPT, "pgbouncer-image-check", base_dir]


def parse_report(stdout: str) -> ImageReport:
    """Read the script's output; lines after the marker are PgBouncer's, never ``missing``.

    Args:
        stdout: what the script printed.

    Returns:
        The report. Output without the marker (the script did not run to its end) reports the
        check itself as missing.
    """
    head, marker, tail = stdout.partition(VERSION_MARKER + "\n")
    if not marker:
        return ImageReport(("a complete image check run",), None)
    lines = head.splitlines()
    missing = tuple(
        line.removeprefix("missing ").strip() for line in lines if line[:8] == "missing "
    )
    absent = tuple(line.removeprefix("absent ").strip() for line in lines if line[:7] == "absent ")
    return ImageReport(missing, parse_version(tail), absent)


def problems(report: ImageReport) -> tuple[str, ...]:
    """Every way the image breaks the contract, the version included, for a status message."""
    found = list(report.missing)
    if "pgbouncer on PATH" not in found:
        need = ".".join(map(str, MIN_PGBOUNCER_VERSION))
        if report.version is None:
            found.append(f"PgBouncer >= {need} (no version reported)")
        elif version_tuple(report.version) < MIN_PGBOUNCER_VERSION:
            found.append(f"PgBouncer >= {need} (found {report.version})")
    return tuple(found)


def check_image(container: ops.Container, base_dir: str = DEFAULT_BASE_DIR) -> ImageCheck | None:
    """Run the contract check in the container: one exec, as the workload user.

    The same exec reads PgBouncer's version and which optional pieces the image carries, so a
    ``pebble-ready`` or a refresh costs one exec for all of it.

    Args:
        container: the ``pgbouncer`` container (Pebble must answer).
        base_dir: the directory PgBouncer's files live in.

    Returns:
        What was found; None when Pebble cannot be reached (nothing is known: check again at
        the next ``pebble-ready``). An exec Pebble refuses because the user does not exist, or
        because there is no ``sh``, is reported as that missing piece.
    """
    try:
        process = container.exec(
            contract_command(base_dir), user=WORKLOAD_USER, group=WORKLOAD_USER, timeout=30
        )
        stdout, _ = process.wait_output()
    except pebble.ConnectionError:
        return None
    except pebble.APIError as exc:
        if "user" in exc.message.lower() or "group" in exc.message.lower():
            return ImageCheck((f"user {WORKLOAD_USER}",))
        return ImageCheck((f"sh ({exc.message})",))
    except pebble.ExecError as exc:
        return ImageCheck((f"a complete image check run (exit {exc.exit_code})",))
    except pebble.ChangeError as exc:
        return ImageCheck((f"a complete image check run ({exc.err})",))
    except pebble.TimeoutError:
        return ImageCheck(("a complete image check run (timed out)",))
    report = parse_report(stdout)
    ran = VERSION_MARKER in stdout and "pgbouncer on PATH" not in report.missing
    return ImageCheck(problems(report), report.version, ran, report.absent)


def facts_path(base_dir: str = DEFAULT_BASE_DIR) -> str:
    """Where the check's findings are kept in the container (no secret in it)."""
    return str(PurePosixPath(base_dir) / "image-check.json")


FACTS_FILE = facts_path()


@dataclass(frozen=True)
class ImageFacts:
    """What the last check found, kept in the container it describes (:data:`FACTS_FILE`).

    A fact of this container, not of the application: a new container (a new pod, a refresh)
    starts without the file and is checked again at its ``pebble-ready``.

    Attributes:
        version: PgBouncer's version; ``""`` before any check,
            :data:`~state.charm_state.UNKNOWN_VERSION` when ``--version`` named none.
        problems: every way the image breaks the contract.
        exporter_absent: the image has no metrics exporter (neither ours nor the Go one).
        exporter_go: the image has the Go ``pgbouncer_exporter`` and not ours (the pinned
            default image, docs/image.md).
    """

    version: str = ""
    problems: tuple[str, ...] = ()
    exporter_absent: bool = False
    exporter_go: bool = False

    @classmethod
    def from_check(cls, check: ImageCheck) -> ImageFacts:
        """The facts of a check that ran."""
        python_absent = EXPORTER_COMMAND in check.absent
        go = python_absent and GO_EXPORTER_COMMAND not in check.absent
        return cls(
            version=check.version or (UNKNOWN_VERSION if check.ran else ""),
            problems=check.problems,
            exporter_absent=python_absent and not go,
            exporter_go=go,
        )

    @classmethod
    def from_text(cls, text: str | None) -> ImageFacts:
        """The facts in the file's text; none (never checked) when absent or unreadable."""
        if not text:
            return cls()
        try:
            data = json.loads(text)
            return cls(
                version=str(data.get("version", "")),
                problems=tuple(str(p) for p in data.get("problems", ())),
                exporter_absent=bool(data.get("exporter_absent", False)),
                exporter_go=bool(data.get("exporter_go", False)),
            )
        except (ValueError, TypeError, AttributeError):
            return cls()

    def to_text(self) -> str:
        """The file's text (sorted keys: equal facts give equal bytes)."""
        data = {
            "version": self.version,
            "problems": list(self.problems),
            "exporter_absent": self.exporter_absent,
            "exporter_go": self.exporter_go,
        }
        return json.dumps(data, sort_keys=True) + "\n"
