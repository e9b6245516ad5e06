"""A stand-in for Prometheus: scrape every unit's exporter on a timer and count what fails.

Used by ``bench.actions`` (the rotation rounds) and ``tests/e2e/test_rotation.py``. A unit is
anything with ``name`` and ``address(pod_port)`` (``harness.juju.Unit``).
"""

from __future__ import annotations

import threading
import time
import urllib.request
from typing import Any

from pgbouncer.exporter import EXPORTER_PORT


class Scraper:
    """Prometheus, scraping every unit's exporter every 0.25 s; what each scrape found.

    A scrape fails when the HTTP request fails or any process's ``pgbouncer_up`` is not 1
    (the exporter answers 200 and reports 0 when its login to a console was refused).
    """

    def __init__(self, units: list[Any]):
        self.targets = {u.name: u.address(EXPORTER_PORT) for u in units}
        # The exporters started with the metrics relation: wait until each answers once.
        deadline = time.time() + 15
        for host, port in self.targets.values():
            while True:
                try:
                    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5):
                        break
                except OSError:
                    if time.time() > deadline:
                        raise
                    time.sleep(0.2)
        self.ok = dict.fromkeys(self.targets, 0)
        self.failed: list[tuple[float, str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, (host, port) in self.targets.items():
                try:
                    url = f"http://{host}:{port}/metrics"
                    with urllib.request.urlopen(url, timeout=5) as r:
                        text = r.read().decode()
                    up = [ln for ln in text.splitlines() if ln.startswith("pgbouncer_up{")]
                    if not up or any(not ln.endswith(" 1.0") for ln in up):
                        self.failed.append((time.time(), name, " / ".join(up) or "no up"))
                    else:
                        self.ok[name] += 1
                except OSError as exc:
                    self.failed.append((time.time(), name, str(exc)))
            self._stop.wait(0.25)

    def stop(self) -> None:
        """Stop scraping (after the scrape in flight)."""
        self._stop.set()
        self._thread.join(timeout=10)
