"""Part 5: what TLS between clients and PgBouncer costs (pgbench -S, persistent and ``-C``).

One PgBouncer process, TLS configured as the charm renders it (``client_tls_sslmode =
prefer``, files from ``render_tls_files``); the same pooler is measured with plain clients
(``sslmode=disable``) and verifying TLS clients (``sslmode=verify-full`` with the CA), rounds
interleaved. The TLS handshake is paid per connection, so ``-C`` (a new connection per
transaction) shows its full cost; persistent connections show the cost of encryption alone.
PgBouncer's server connections are plain here: pooled, their TLS cost is paid once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from bench.pgbench import PgbenchResult, Target, run_pgbench
from bench.settings import Settings
from bench.stack import Stack, pooler_config
from harness.servers.system import free_port, write_service_file
from harness.servers.tls import make_ca
from pgbouncer.config import ClientTLS, render_tls_files
from state.tls import ClientTLSMaterial

MODES = {"persistent": [], "connect (-C)": ["-C"]}
LABELS = ("plain", "TLS verify-full")


@dataclass
class TLSCost:
    """Every run, by (label, mode)."""

    runs: dict[tuple[str, str], list[PgbenchResult]] = field(default_factory=dict)

    def tps(self, label: str, mode: str) -> float:
        """Mean tps over the rounds."""
        runs = self.runs.get((label, mode), [])
        return sum(r.tps for r in runs) / len(runs) if runs else 0.0

    def connect_ms(self, label: str, mode: str) -> float | None:
        """Mean connection time (``-C`` runs only)."""
        values = [r.connect_ms for r in self.runs.get((label, mode), []) if r.connect_ms]
        return sum(values) / len(values) if values else None

    def failed(self) -> int:
        """Failed transactions and aborted clients over every run."""
        return sum(r.failed + r.aborted_clients for rs in self.runs.values() for r in rs)


def run(settings: Settings, work: Path) -> TLSCost:
    """Measure plain against TLS through one PgBouncer; every server stopped at the end."""
    stack = Stack()
    try:
        backend = stack.backend(settings.scale, max_connections=100)
        pooler = stack.pooler("N=1", pooler_config(backend, free_port(), 1), backend)
        ca = make_ca("bench CA")
        leaf = ca.leaf("pgbouncer", dns=("localhost",), ips=("127.0.0.1",))
        material = ClientTLSMaterial.from_pem(leaf.cert_pem, leaf.key_pem, ca.pem)
        for path, text in render_tls_files(material, None, str(pooler.base_dir)).items():
            if text is not None:
                write_service_file(Path(path), text)
        pooler.apply(dataclasses.replace(pooler.config, client_tls=ClientTLS("prefer")))
        ca_file = work / "bench-ca.crt"
        ca_file.write_text(ca.pem)
        plain = dataclasses.replace(pooler.target(), label=LABELS[0], sslmode="disable")
        tls = dataclasses.replace(
            pooler.target(), label=LABELS[1], sslmode="verify-full", sslrootcert=str(ca_file)
        )
        result = TLSCost()
        base = ["-S", "-n", "-c", str(settings.clients), "-j", str(settings.threads)]
        base += ["-T", str(settings.run_seconds)]
        for rnd in range(settings.rounds):
            targets: list[Target] = [plain, tls] if rnd % 2 == 0 else [tls, plain]
            for mode, extra in MODES.items():
                for target in targets:
                    res = run_pgbench(
                        target,
                        [*base, *extra],
                        work,
                        timeout=settings.run_seconds + 120,
                        name=f"tls-{rnd}-{target.label[:3]}-{'C' if extra else 'p'}",
                    ).served(target.label)
                    result.runs.setdefault((target.label, mode), []).append(res)
                    print(
                        f"  round {rnd + 1} {mode:13s} {target.label:16s} tps {res.tps:9.1f}"
                        f"  failed {res.failed + res.aborted_clients}",
                        flush=True,
                    )
        return result
    finally:
        stack.close()


def section(cost: TLSCost) -> list[str]:
    """The report's section for this part."""
    lines = [
        "## 5. The cost of TLS between clients and PgBouncer",
        "",
        "pgbench -S through one PgBouncer process, plain clients against `sslmode=verify-full`",
        "clients of the same pooler (TLS 1.3, EC P-256 certificate), mean of the rounds.",
        "",
        "| mode | plain tps | TLS tps | TLS / plain | connect ms plain | connect ms TLS |",
        "|---|---|---|---|---|---|",
    ]
    for mode in MODES:
        p, t = cost.tps(LABELS[0], mode), cost.tps(LABELS[1], mode)
        ratio = f"{t / p:.2f}×" if p else "-"  # noqa: RUF001 (as in the other tables)
        cp, ct = cost.connect_ms(LABELS[0], mode), cost.connect_ms(LABELS[1], mode)
        lines.append(
            f"| {mode} | {p:.1f} | {t:.1f} | {ratio} | "
            f"{'-' if cp is None else f'{cp:.2f}'} | {'-' if ct is None else f'{ct:.2f}'} |"
        )
    lines += ["", f"Failed transactions or aborted clients: {cost.failed()}."]
    return lines
