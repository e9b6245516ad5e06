"""The SQL text of this package, kept in ``sql/*.sql`` and loaded as :class:`psycopg.sql.SQL`.

Each file holds named statements: a ``-- name: <key>`` line, then the statement. Full-line
``--`` comments are dropped so that the server sees only the statement. Identifiers and literals
are filled in with ``psycopg.sql`` by the caller (``query(...).format(role=sql.Identifier(x))``);
values in ``%(name)s`` placeholders are bound parameters.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from psycopg import sql

SQL_DIR = Path(__file__).parent / "sql"

_NAME_LINE = re.compile(r"^-- name: ([a-z_]+)\s*$", re.MULTILINE)


@functools.cache
def _statements(filename: str) -> dict[str, str]:
    text = (SQL_DIR / filename).read_text(encoding="utf-8")
    parts = _NAME_LINE.split(text)
    statements: dict[str, str] = {}
    # parts = [preamble, name1, body1, name2, body2, ...]
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [line for line in body.splitlines() if not line.lstrip().startswith("--")]
        statement = "\n".join(lines).strip().rstrip(";").strip()
        if name in statements or not statement:
            raise ValueError(f"{filename}: duplicate or empty statement {name!r}")
        statements[name] = statement
    return statements


def query(filename: str, name: str) -> sql.SQL:
    """The statement ``name`` of ``sql/<filename>``, ready for ``.format(...)``.

    Args:
        filename: file under ``sql/``, e.g. ``"auth.sql"``.
        name: the key after ``-- name:``.

    Raises:
        KeyError: no such statement in that file.
    """
    return sql.SQL(_statements(filename)[name])  # type: ignore[arg-type]
