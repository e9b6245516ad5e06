#!/usr/bin/env bash
# Installs the Python metrics exporter (PyPI prometheus-pgbouncer-exporter, pinned in
# requirements-exporter.txt) into its own venv: the one install both the tests
# (scripts/setup-system.sh, .build/exporter) and the recommended image (rockcraft.yaml,
# /opt/pgbouncer-exporter) use. Installed without the exporter's exact-version pins
# (psycopg2 2.8.5 has no wheel for current Pythons); the file lists what replaces them.
#
#   build-exporter.sh VENV REQUIREMENTS
set -euo pipefail
VENV="$1"; REQUIREMENTS="$2"
rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check --no-deps -r "$REQUIREMENTS"
cp "$REQUIREMENTS" "$VENV/.requirements"
