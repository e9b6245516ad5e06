"""The ``logging`` relation (interface ``loki_push_api``, we require): logs to Loki via Pebble.

Each unit of the Loki side (Loki itself, or an agent speaking its push API) writes its push URL
in its unit databag, key ``endpoint``, as JSON::

    {"url": "http://loki-0.loki-endpoints.cos.svc.cluster.local:3100/loki/api/v1/push"}

Pebble forwards service logs itself (layer ``log-targets``, type ``loki``): this module turns
every such URL into one log target of a layer of its own (label :data:`LAYER_LABEL`), covering
every service of the container (``services: [all]``: each PgBouncer process, in every slot, and
the exporter), labelled with the Juju topology. No process of ours reads or ships logs, and no
restart is needed: Pebble applies log-target changes when the layer is added. A target whose
endpoint went away stays in the plan (Pebble cannot delete one) with ``services: [-all]``, so it
forwards nothing.

Every URL is checked before it reaches the plan: ``http``/``https``, a host, no user or
password (the plan is readable by anyone with Pebble access), no whitespace or control
characters, at most 2,048 characters. A bad one is skipped and named by :func:`problems`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import ops
from ops import pebble

from relations.metrics import JujuTopology

LOGGING_RELATION = "logging"
LAYER_LABEL = "log-forwarding"
TARGET_PREFIX = "loki-"
MAX_URL = 2048
_TARGET_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


@dataclass(frozen=True)
class Endpoints:
    """The push URLs found in the relation data, and what was refused.

    Attributes:
        urls: log target name → push URL, for every acceptable endpoint.
        refused: ``<unit>: <reason>`` for every endpoint skipped.
    """

    urls: dict[str, str]
    refused: tuple[str, ...] = ()


def check_url(url: object) -> str:
    """A push URL fit for the Pebble plan.

    Raises:
        ValueError: not an http(s) URL with a host, or one holding credentials, whitespace or
            control characters, or too long.
    """
    if not isinstance(url, str) or not url:
        raise ValueError("no url")
    if len(url) > MAX_URL:
        raise ValueError(f"url longer than {MAX_URL} characters")
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url) or not url.isascii():
        raise ValueError("url holds whitespace, control or non-ASCII characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError("url scheme is not http or https")
    if not parts.hostname:
        raise ValueError("url has no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("url holds credentials")
    try:
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        raise ValueError("url has a bad port") from None
    return url


def target_name(unit_name: str) -> str:
    """The log target's name for a Loki unit: ``loki-<app>-<number>``."""
    name = TARGET_PREFIX + unit_name.replace("/", "-").lower()
    if not _TARGET_NAME.fullmatch(name):
        raise ValueError("unit name does not make a target name")
    return name


def parse_endpoints(bags: Iterable[tuple[str, Mapping[str, str]]]) -> Endpoints:
    """The push URLs from the remote units' databags; pure.

    Args:
        bags: ``(unit name, its databag)`` for every remote unit of every ``logging`` relation.
    """
    urls: dict[str, str] = {}
    refused: list[str] = []
    for unit, bag in bags:
        raw = bag.get("endpoint")
        if raw is None:
            continue
        try:
            endpoint = json.loads(raw)
            if not isinstance(endpoint, dict):
                raise ValueError("endpoint is not a JSON object")
            urls[target_name(unit)] = check_url(endpoint.get("url"))
        except ValueError as exc:
            refused.append(f"{unit}: {exc}")
    return Endpoints(urls, tuple(refused))


def build_log_layer(
    urls: Mapping[str, str], existing: Iterable[str], topology: JujuTopology
) -> pebble.LayerDict:
    """The log-forwarding layer: a target per URL; targets no longer wanted forward nothing.

    Args:
        urls: target name → push URL (from :func:`parse_endpoints`).
        existing: the names of log targets in the current plan.
        topology: labels every log line carries in Loki.
    """
    t = topology.checked()
    labels = {
        "product": "pgbouncer",
        "juju_model": t.model,
        "juju_model_uuid": t.model_uuid,
        "juju_application": t.application,
        "juju_unit": t.unit,
        "juju_charm": t.charm_name,
    }
    targets: dict[str, pebble.LogTargetDict] = {
        name: {
            "override": "replace",
            "type": "loki",
            "location": url,
            "services": ["all"],
            "labels": dict(labels),
        }
        for name, url in sorted(urls.items())
    }
    for name in sorted(set(existing) - set(urls)):
        if name.startswith(TARGET_PREFIX):
            targets[name] = {"override": "merge", "services": ["-all"]}
    return {"summary": "pgbouncer-k8s log forwarding", "log-targets": targets}


class LogForwarding:
    """Keeps the container's log targets in step with the ``logging`` relations."""

    def __init__(self, charm: ops.CharmBase, container: ops.Container, topology: JujuTopology):
        self._charm = charm
        self._container = container
        self._topology = topology

    def endpoints(self) -> Endpoints:
        """Every push URL the related Loki units publish."""
        bags = [
            (unit.name, relation.data[unit])
            for relation in self._charm.model.relations.get(LOGGING_RELATION, [])
            for unit in sorted(relation.units, key=lambda u: u.name)
        ]
        return parse_endpoints(bags)

    def apply(self) -> Endpoints:
        """Add the layer when it differs from the plan; returns what was found.

        Nothing happens when Pebble cannot be reached (the next hook tries again) or when there
        is neither a relation nor a target of ours in the plan.
        """
        found = self.endpoints()
        if not self._container.can_connect():
            return found
        try:
            current = self._container.get_plan().log_targets
        except pebble.ConnectionError:
            return found
        ours = {name for name in current if name.startswith(TARGET_PREFIX)}
        if not found.urls and not ours:
            return found
        layer = build_log_layer(found.urls, ours, self._topology)
        wanted = layer.get("log-targets", {})
        if all(
            name in current and _same(current[name].to_dict(), target)
            for name, target in wanted.items()
        ):
            return found
        self._container.add_layer(LAYER_LABEL, layer, combine=True)
        return found


def _same(current: Mapping[str, object], wanted: Mapping[str, object]) -> bool:
    """Whether a target in the plan already says what ``wanted`` asks for."""
    if wanted.get("services") == ["-all"]:
        services = current.get("services") or []
        return isinstance(services, list) and bool(services) and services[-1] == "-all"
    return all(current.get(k) == v for k, v in wanted.items() if k != "override")
