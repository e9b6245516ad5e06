"""PgBouncer's ini grammar, as the charm writes and reads it; and what a reload cannot apply.

:func:`parse_ini` reads a file the way PgBouncer does (enough for the charm's own checks: the
renderer reads back what it wrote, the plan compares the running file with the wanted one);
:func:`needs_restart` is the reload policy. :class:`RenderError` is raised for any value that
cannot be written into this grammar safely.
"""

from __future__ import annotations

import re

INI_KEY = re.compile(r"[A-Za-z0-9_.*\-]+")
"""A PgBouncer ini key written without quotes: libusual's cfparser reads [A-Za-z0-9_.*-]+."""


class RenderError(ValueError):
    """A value cannot be rendered safely into PgBouncer's files; nothing was rendered.

    Attributes:
        field: which input the bad value came from (for a status message).
        reason: what is wrong with it. The value itself is never included: it may be hostile,
            long, or a secret.
    """

    def __init__(self, field: str, reason: str):
        self.field = field
        self.reason = reason
        super().__init__(f"cannot render {field}: {reason}")


NO_RELOAD_KEYS = frozenset(
    {
        "disable_pqexec",
        "job_name",
        "listen_addr",
        "listen_backlog",
        "listen_port",
        "pidfile",
        "pkt_buf",
        "resolv_conf",
        "service_name",
        "so_reuseport",
        "track_extra_parameters",
        "unix_socket_dir",
        "unix_socket_group",
        "unix_socket_mode",
        "user",
    }
)
"""``[pgbouncer]`` keys a RELOAD silently ignores (``CF_NO_RELOAD`` in PgBouncer's
``src/main.c``; ``SHOW CONFIG`` reports them ``changeable = no``). A change to any of them needs
a restart. ``peer_id``, ``[databases]``, ``[peers]`` and the auth file all reload."""


def parse_ini(text: str) -> dict[str, dict[str, str]]:
    """Read a PgBouncer ini the way PgBouncer does, enough for :func:`needs_restart`.

    Comment lines start with ``;`` or ``#``; keys are ``[A-Za-z0-9_.*-]+`` or single-quoted; the
    value is the rest of the line without edge whitespace. Section names keep their case, keys in
    ``[pgbouncer]`` are compared as written.

    Args:
        text: the file content.

    Returns:
        ``{section: {key: value}}``; a later duplicate key wins, as in PgBouncer.

    Raises:
        RenderError: a line PgBouncer would reject as a syntax error.
    """
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise RenderError("ini", f"line {number}: unterminated section header")
            current = sections.setdefault(line[1:-1], {})
            continue
        if line.startswith("'"):
            end = line.find("'", 1)
            if end <= 1:
                raise RenderError("ini", f"line {number}: bad quoted key")
            key, rest = line[1:end], line[end + 1 :]
        else:
            match = INI_KEY.match(line)
            key = match.group(0) if match else ""
            rest = line[len(key) :]
        rest = rest.lstrip(" \t")
        if not key or not rest.startswith("="):
            raise RenderError("ini", f"line {number}: expected key = value")
        if current is None:
            raise RenderError("ini", f"line {number}: value outside a section")
        current[key] = rest[1:].strip()
    return sections


def needs_restart(old_ini: str | None, new_ini: str) -> bool:
    """Whether going from ``old_ini`` to ``new_ini`` needs a restart rather than a reload.

    True when there was no file (the process has never run with one) or when a key in
    :data:`NO_RELOAD_KEYS` was added, removed or changed. Everything else (``[databases]``,
    ``[peers]``, pool settings, auth) is applied by a reload with clients staying connected.

    Args:
        old_ini: the file the process runs with, or None.
        new_ini: the file about to be written.

    Returns:
        True when only a restart can apply the change.
    """
    if old_ini is None:
        return True
    try:
        old = parse_ini(old_ini).get("pgbouncer", {})
    except RenderError:
        # We cannot tell what the running process read: start it afresh.
        return True
    new = parse_ini(new_ini).get("pgbouncer", {})
    return any(old.get(key) != new.get(key) for key in NO_RELOAD_KEYS)
