"""Fixtures of the functional tier: the workload code itself running real PgBouncer processes."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.pebble_socket import pebble_container
from harness.processes import PebbleProcessRunner, ServiceProcess
from harness.servers.pg import PostgresServer
from harness.servers.pgb import PgBouncerFactory
from pgbouncer.config import (
    PgBouncerConfig,
    auth_file_path,
    render_auth_file,
    render_files,
)
from pgbouncer.plan import ApplyResult
from pgbouncer.slots import DEFAULT_BASE_DIR
from pgbouncer.workload import Workload


@dataclass
class PebbleGroup:
    """PgBouncer processes that :class:`pgbouncer.workload.Workload` runs, through Pebble.

    The workload code is the charm's own; its container's Pebble is the project's stand-in
    (``harness/pebble_standin.py``) with real processes, served to ``ops``' own client, and
    ``/var/lib/pgbouncer`` is ``workdir`` on the host. So every signal, start, stop and file a
    test sees is what the charm would have Pebble do.
    """

    workload: Workload
    runner: PebbleProcessRunner
    workdir: Path
    cfg: PgBouncerConfig
    password: str
    edit: Callable[[str], str]

    @property
    def processes(self) -> list[ServiceProcess]:
        """The running processes, by service name."""
        return [self.runner.processes[name] for name in sorted(self.runner.running())]

    def files(self, cfg: PgBouncerConfig) -> dict[str, str | None]:
        """What the charm hands the workload for ``cfg``: every slot's ini and the auth file."""
        files: dict[str, str | None] = {
            path: self.edit(text)
            for path, text in render_files(cfg, base_dir=DEFAULT_BASE_DIR).items()
        }
        files[auth_file_path(DEFAULT_BASE_DIR)] = render_auth_file("postgres", self.password)
        return files

    def apply(self, cfg: PgBouncerConfig, *, wait_for_clients: bool = True) -> ApplyResult:
        """Bring the processes to ``cfg`` the way the charm does (``Workload.apply``)."""
        result = self.workload.apply(
            self.files(cfg), cfg.processes, wait_for_clients=wait_for_clients
        )
        self.cfg = cfg
        return result


@pytest.fixture
def workload_group(
    pgbouncer_factory: PgBouncerFactory,
) -> Iterator[Callable[..., PebbleGroup]]:
    """Start :class:`PebbleGroup` s (``start(postgres, cfg, edit=...)``); all stopped at the end."""
    with contextlib.ExitStack() as stack:

        def start(
            postgres: PostgresServer,
            cfg: PgBouncerConfig,
            edit: Callable[[str], str] = lambda text: text,
        ) -> PebbleGroup:
            workdir = pgbouncer_factory.workdir()
            container, runner = stack.enter_context(pebble_container({DEFAULT_BASE_DIR: workdir}))
            group = PebbleGroup(Workload(container), runner, workdir, cfg, postgres.password, edit)
            result = group.apply(cfg)
            assert len(result.started) == cfg.processes, result
            return group

        yield start
