"""A small asyncio + psycopg client load generator: many clients, each counted on its own.

pgbench stops the whole run at the first client that cannot connect (and PostgreSQL 15's pgbench
even crashed here doing so), so it cannot say *how many* of 300 or 1,000 clients a server
refuses. This generator can: every client connects (at most ``connect_concurrency`` handshakes
at a time, as an application's pool would ramp up), then runs the select-only query in a loop
until the deadline. Each client's fate is recorded: refused at connect, failed mid-run, or ok.
It is one Python process, so its query rate is bounded by this process's CPU; its tps is only
comparable to itself (direct vs. pooled), not to pgbench.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import psycopg

from bench.pgbench import Target


@dataclass
class LoadResult:
    """Outcome of one load generator run.

    Attributes:
        clients: clients started.
        connected: clients that got a connection.
        refused: clients whose connection attempt failed.
        failed: clients that connected and later got an error.
        queries: queries completed by all clients.
        seconds: length of the query phase.
        errors: error message (first line) → how many clients got it.
    """

    clients: int
    connected: int = 0
    refused: int = 0
    failed: int = 0
    queries: int = 0
    seconds: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def qps(self) -> float:
        """Queries per second over the query phase."""
        return self.queries / self.seconds if self.seconds else 0.0


async def _client(
    target: Target,
    accounts: int,
    gate: asyncio.Semaphore,
    start_queries: asyncio.Event,
    stop_at: list[float],
    result: LoadResult,
) -> None:
    async with gate:
        try:
            conn = await psycopg.AsyncConnection.connect(
                host=target.host,
                port=target.port,
                dbname=target.dbname,
                user=target.user,
                password=target.password,
                connect_timeout=15,
                autocommit=True,
                prepare_threshold=None,
            )
        except psycopg.Error as exc:
            result.refused += 1
            result.errors[str(exc).strip().splitlines()[-1][:120]] += 1
            return
    result.connected += 1
    try:
        await start_queries.wait()
        while time.monotonic() < stop_at[0]:
            aid = random.randint(1, accounts)
            await conn.execute("SELECT abalance FROM pgbench_accounts WHERE aid = %s", (aid,))
            result.queries += 1
    except psycopg.Error as exc:
        result.failed += 1
        result.errors[str(exc).strip().splitlines()[-1][:120]] += 1
    finally:
        await conn.close()


async def _run(
    target: Target, clients: int, seconds: float, accounts: int, connect_concurrency: int
) -> LoadResult:
    result = LoadResult(clients=clients)
    gate = asyncio.Semaphore(connect_concurrency)
    go = asyncio.Event()
    stop_at = [0.0]
    tasks = [
        asyncio.create_task(_client(target, accounts, gate, go, stop_at, result))
        for _ in range(clients)
    ]
    # Queries start once every client has connected or been refused (bounded wait).
    deadline = time.monotonic() + 120
    while result.connected + result.refused < clients and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    start = time.monotonic()
    stop_at[0] = start + seconds
    go.set()
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=seconds + 120)
    result.seconds = time.monotonic() - start
    return result


def run_load(
    target: Target,
    clients: int,
    seconds: float,
    accounts: int,
    connect_concurrency: int = 50,
) -> LoadResult:
    """Run ``clients`` concurrent clients against ``target`` for ``seconds``.

    Args:
        target: where to connect.
        clients: number of concurrent clients (each its own connection).
        seconds: length of the query phase (after all clients connected).
        accounts: rows in ``pgbench_accounts`` (``100000 * scale``).
        connect_concurrency: handshakes in flight at once.

    Returns:
        How many clients connected, were refused or failed, and the query rate.
    """
    return asyncio.run(_run(target, clients, seconds, accounts, connect_concurrency))
