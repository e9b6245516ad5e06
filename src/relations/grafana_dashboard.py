"""The ``grafana-dashboard`` relation (interface ``grafana_dashboard``, we provide).

The library most charms use for it is published only on Charmhub, so this is a small provider
of our own, written against the wire format that library and its consumer (the Grafana charm)
use. The leader writes one key in the application databag, ``dashboards``, a JSON object::

    {
      "templates": {
        "file:pgbouncer": {
          "charm": "pgbouncer-k8s",
          "content": "<the dashboard JSON, LZMA-compressed (xz container), then base64>",
          "juju_topology": {"model": "dev", "model_uuid": "…", "application": "pgbouncer-k8s",
                            "unit": "pgbouncer-k8s/0"},
          "inject_dropdowns": true,
          "dashboard_alt_uid": "<16 hex digits>"
        }
      },
      "uuid": "<changes whenever the templates change>"
    }

The consumer decodes ``content`` with ``lzma.decompress(base64.b64decode(content))``, adds the
topology dropdowns a dashboard lacks, and with ``juju_topology`` set injects matchers for this
model and application into every Prometheus query of a panel whose datasource is
``${prometheusds}`` (ours all are): the dashboard is templated by the Juju topology.

As the library does, the dashboard's ``uid`` is the 40-hex-digit SHAKE-256 of
``<charm name>-<path in the charm>`` (the same dashboard from every deployment of this charm is
one dashboard in Grafana), and it carries the tag ``charm: <charm name>``. ``uuid`` is a hash
of the templates, not a random value: publishing the same dashboard twice writes nothing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import lzma
from pathlib import Path
from typing import Any

import ops

from relations.metrics import JujuTopology

DASHBOARD_RELATION = "grafana-dashboard"
DASHBOARDS_DIR = Path(__file__).resolve().parents[1] / "grafana_dashboards"
DASHBOARDS_KEY = "dashboards"


def encode_content(text: str) -> str:
    """The wire encoding of a dashboard: LZMA (xz container), then base64, as text."""
    return base64.b64encode(lzma.compress(text.encode("utf-8"))).decode("ascii")


def decode_content(content: str) -> str:
    """The inverse of :func:`encode_content`, as the consumer reads it."""
    return lzma.decompress(base64.b64decode(content.encode("ascii"))).decode("utf-8")


def _shake(text: str, digits: int) -> str:
    return hashlib.shake_256(text.encode("utf-8")).hexdigest(digits // 2)


def dashboard_uid(charm_name: str, relative_path: str) -> str:
    """The dashboard's Grafana uid: 40 hex digits derived from the charm and the file."""
    return _shake(f"{charm_name}-{relative_path}", 40)


def build_templates(
    dashboards: dict[str, str], charm_name: str, topology: JujuTopology
) -> dict[str, Any]:
    """The ``templates`` object, from dashboards ``{file stem: JSON text}``; pure.

    Args:
        dashboards: each dashboard file's stem and content.
        charm_name: this charm's name (``charm`` field, uid and tag).
        topology: where the dashboard's metrics come from.

    Raises:
        ValueError: a dashboard is not a JSON object, or the topology is not plain names.
    """
    t = topology.checked()
    templates: dict[str, Any] = {}
    for stem, text in sorted(dashboards.items()):
        dashboard = json.loads(text)
        if not isinstance(dashboard, dict):
            raise ValueError(f"dashboard {stem} is not a JSON object")
        dashboard["uid"] = dashboard_uid(charm_name, f"src/grafana_dashboards/{stem}.json")
        tags = [tag for tag in dashboard.get("tags", []) if isinstance(tag, str)]
        if not any(tag.startswith("charm: ") for tag in tags):
            tags.append(f"charm: {charm_name}")
        dashboard["tags"] = tags
        key = f"file:{stem}"
        templates[key] = {
            "charm": charm_name,
            "content": encode_content(json.dumps(dashboard, sort_keys=True)),
            "juju_topology": {
                "model": t.model,
                "model_uuid": t.model_uuid,
                "application": t.application,
                "unit": t.unit,
            },
            "inject_dropdowns": True,
            "dashboard_alt_uid": _shake(f"{charm_name}-{key}", 16),
        }
    return templates


def app_databag(templates: dict[str, Any]) -> dict[str, str]:
    """The leader's application databag: ``dashboards``, with a uuid derived from its templates."""
    body = json.dumps(templates, sort_keys=True)
    uuid = hashlib.sha256(body.encode()).hexdigest()[:32]
    return {DASHBOARDS_KEY: json.dumps({"templates": templates, "uuid": uuid}, sort_keys=True)}


def load_dashboards(directory: Path = DASHBOARDS_DIR) -> dict[str, str]:
    """The charm's dashboards, ``{file stem: JSON text}``."""
    return {path.stem: path.read_text() for path in sorted(directory.glob("*.json"))}


class GrafanaDashboardProvider:
    """Publishes the charm's dashboards on every ``grafana-dashboard`` relation (leader only)."""

    def __init__(self, charm: ops.CharmBase, topology: JujuTopology):
        self._charm = charm
        self._topology = topology

    def publish(self) -> None:
        """Write ``dashboards`` where it differs; a follower writes nothing."""
        relations = self._charm.model.relations.get(DASHBOARD_RELATION, [])
        if not relations or not self._charm.unit.is_leader():
            return
        data = app_databag(
            build_templates(load_dashboards(), self._charm.meta.name, self._topology)
        )
        for relation in relations:
            bag = relation.data[self._charm.app]
            for key, value in data.items():
                if bag.get(key) != value:
                    bag[key] = value
