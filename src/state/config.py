"""The charm's configuration as one typed, validated value."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

POOL_MODES = ("session", "transaction", "statement")
MAX_PREPARED_STATEMENTS_LIMIT = 1000


class InvalidConfigError(ValueError):
    """A configuration option has a value the charm cannot use."""

    def __init__(self, option: str, reason: str):
        self.option = option
        self.reason = reason
        super().__init__(f"invalid config {option}: {reason}")


def _int(options: Mapping[str, object], name: str, default: int) -> int:
    value = options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidConfigError(name, "must be an integer")
    return value


@dataclass(frozen=True)
class CharmConfig:
    """Validated charm options (names as in charmcraft.yaml, matching the incumbent charm)."""

    listen_port: int = 6432
    pool_mode: str = "session"
    max_db_connections: int = 100
    max_prepared_statements: int = 100

    @classmethod
    def from_dict(cls, options: Mapping[str, object]) -> CharmConfig:
        """Build from Juju's config mapping; raises :class:`InvalidConfigError`."""
        listen_port = _int(options, "listen_port", 6432)
        if not 1024 <= listen_port <= 65535:
            raise InvalidConfigError("listen_port", "must be from 1024 to 65535")
        pool_mode = options.get("pool_mode", "session")
        if pool_mode not in POOL_MODES:
            raise InvalidConfigError("pool_mode", f"must be one of {', '.join(POOL_MODES)}")
        max_db_connections = _int(options, "max_db_connections", 100)
        if max_db_connections < 0:
            raise InvalidConfigError("max_db_connections", "must be 0 (unlimited) or more")
        max_prepared = _int(options, "max_prepared_statements", 100)
        if not 0 <= max_prepared <= MAX_PREPARED_STATEMENTS_LIMIT:
            raise InvalidConfigError(
                "max_prepared_statements", f"must be from 0 to {MAX_PREPARED_STATEMENTS_LIMIT}"
            )
        return cls(
            listen_port=listen_port,
            pool_mode=str(pool_mode),
            max_db_connections=max_db_connections,
            max_prepared_statements=max_prepared,
        )
