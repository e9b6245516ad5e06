#!/usr/bin/env bash
# Installs the system parts the tests and the demo need, idempotently:
#   - PostgreSQL 15 server binaries (Debian's packages) when missing;
#   - PgBouncer >= 1.21: the one on PATH if it is recent enough, otherwise Debian trixie's
#     source package (with Debian's security patches) fetched through apt's own client and
#     built into .build/pgbouncer (git-ignored).
# No package-archive host name is written anywhere: the URI is read from the machine's own
# apt configuration at run time and only lives in a temporary file.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# PGB_SUITE selects the Debian suite whose PgBouncer source is built: trixie (1.24.1, the
# default, into .build/pgbouncer) or sid (1.26.1 at the time of writing, into
# .build/pgbouncer-sid; the version matrix, `make test-pgbouncer-sid`).
PGB_SUITE="${PGB_SUITE:-trixie}"
case "$PGB_SUITE" in
  trixie) PREFIX="$ROOT/.build/pgbouncer"; PIN_VERSION="1.24.1-1+deb13u2" ;;  # FACTS' revision
  sid) PREFIX="$ROOT/.build/pgbouncer-sid"; PIN_VERSION="1.26.1-1" ;;
  *) printf '[setup] PGB_SUITE must be trixie or sid\n' >&2; exit 1 ;;
esac
MIN_VERSION="1.21"
PG_BIN="/usr/lib/postgresql/15/bin"

log() { printf '[setup] %s\n' "$*" >&2; }
need_root() { [ "$(id -u)" = 0 ] || { log "must run as root to install $1"; exit 1; }; }

APT_UPDATED=0
apt_install() {
  need_root "$*"
  if [ "$APT_UPDATED" = 0 ]; then apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "$@" >/dev/null
}

version_ok() {  # version_ok "1.24.1" -> true when >= MIN_VERSION
  [ "$(printf '%s\n%s\n' "$MIN_VERSION" "$1" | sort -V | head -n1)" = "$MIN_VERSION" ]
}

pgb_version_of() { "$1" --version 2>/dev/null | awk '/PgBouncer/ {print $2; exit}'; }

# ---- PostgreSQL 15 -------------------------------------------------------------------
if [ ! -x "$PG_BIN/postgres" ] || [ ! -x "$PG_BIN/initdb" ] || ! command -v psql >/dev/null; then
  log "installing PostgreSQL 15"
  apt_install postgresql-15 postgresql-client-15
fi
command -v pgbench >/dev/null || [ -x "$PG_BIN/pgbench" ] || apt_install postgresql-contrib
id postgres >/dev/null 2>&1 || { log "user postgres missing after install"; exit 1; }

# ---- the checkout must be reachable by the postgres user --------------------------------
# The servers run as postgres (they refuse root) from binaries under .build/ (the exporter's
# venv, PgBouncer). A checkout inside a 0700 directory (mktemp -d, /root) hides them from it.
# Each ancestor that postgres cannot traverse gets the search bit for others (o+x): no one can
# list it; nothing else changes.
dir="$ROOT"
while [ "$dir" != "/" ]; do
  if ! setpriv --reuid=postgres --regid=postgres --clear-groups test -x "$dir" 2>/dev/null; then
    log "letting the postgres user traverse $dir (chmod o+x)"
    chmod o+x "$dir"
  fi
  dir="$(dirname "$dir")"
done

# ---- promtool (alert rule tests) -------------------------------------------------------
# Debian's prometheus package ships promtool. Its post-install tries to start the Prometheus
# service; where a policy-rc.d forbids that (containers, CI) nothing starts, and elsewhere a
# started server is stopped and disabled again here: the tests only need the promtool binary.
if ! command -v promtool >/dev/null; then
  log "installing promtool (Debian's prometheus package)"
  apt_install prometheus
  if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi
command -v promtool >/dev/null || { log "promtool missing after install"; exit 1; }

# ---- the metrics exporter (functional tests) -------------------------------------------
# prometheus-pgbouncer-exporter from PyPI in its own venv, as the workload image carries it
# (docs/decisions.md): pinned, installed without its exact-version pins (psycopg2 2.8.5 has no
# wheel for this Python); requirements-exporter.txt lists what replaces them.
EXPORTER_VENV="$ROOT/.build/exporter"
if [ ! -x "$EXPORTER_VENV/bin/pgbouncer-exporter" ] \
   || ! cmp -s "$ROOT/requirements-exporter.txt" "$EXPORTER_VENV/.requirements"; then
  log "installing the metrics exporter into .build/exporter"
  bash "$ROOT/scripts/build-exporter.sh" "$EXPORTER_VENV" "$ROOT/requirements-exporter.txt"
fi
chmod -R go+rX "$ROOT/.build/exporter"

# The first "deb" stanza's URI and keyring: the machine's own archive, never written by us.
SOURCES=/etc/apt/sources.list.d/debian.sources
archive_uri() {
  awk '
    /^Types:/ {t=$0} /^URIs:/ {u=$2} /^Signed-By:/ {k=$2}
    /^$/ { if (t ~ /deb( |$)/ && u != "" && !done) {print u, k; done=1} t=""; u=""; k="" }
    END { if (!done && u != "") print u, k }' "$SOURCES"
}

# ---- the Go pgbouncer_exporter (the default image's exporter) ----------------------------
# prometheus-community's pgbouncer_exporter, as Debian packages it (prometheus-pgbouncer-exporter,
# epoch 1, in sid: 0.12.0 when written; it needs glibc >= 2.34, so it runs here), extracted into
# .build/go-exporter/bin/pgbouncer_exporter, the name the default image puts on PATH. The
# functional tests drive it against the real PgBouncer (docs/image.md, "Metrics").
GO_EXPORTER="$ROOT/.build/go-exporter/bin/pgbouncer_exporter"
GO_EXPORTER_PIN="1:0.12.0-1"
if [ ! -x "$GO_EXPORTER" ] && [ "${PGB_SUITE}" = trixie ] && [ "$(id -u)" = 0 ]; then
  log "fetching the Go pgbouncer_exporter (Debian's prometheus-pgbouncer-exporter, sid)"
  read -r GURI GKEYRING < <(archive_uri)
  GWORK="$(mktemp -d)"
  chmod 755 "$GWORK"
  mkdir -p "$GWORK/lists/partial" "$GWORK/cache/archives/partial" "$GWORK/dl"
  chown -R _apt "$GWORK/lists" "$GWORK/cache" "$GWORK/dl" 2>/dev/null || true
  printf 'Types: deb\nURIs: %s\nSuites: sid\nComponents: main\nArchitectures: %s\nSigned-By: %s\n' \
    "$GURI" "$(dpkg --print-architecture)" "$GKEYRING" > "$GWORK/sid.sources"
  GOPTS=(-o "Dir::Etc::sourcelist=$GWORK/sid.sources" -o "Dir::Etc::sourceparts=-"
         -o "Dir::State::lists=$GWORK/lists" -o "Dir::Cache=$GWORK/cache"
         -o "Dir::State::status=/dev/null" -o "APT::Get::List-Cleanup=0")
  if apt-get "${GOPTS[@]}" update -qq >/dev/null 2>&1 \
     && (cd "$GWORK/dl" && { apt-get "${GOPTS[@]}" download \
           "prometheus-pgbouncer-exporter=$GO_EXPORTER_PIN" >/dev/null 2>&1 \
         || apt-get "${GOPTS[@]}" download prometheus-pgbouncer-exporter >/dev/null 2>&1; }); then
    dpkg-deb -x "$(ls "$GWORK"/dl/prometheus-pgbouncer-exporter_*.deb | head -n1)" "$GWORK/x"
    mkdir -p "$(dirname "$GO_EXPORTER")"
    install -m 0755 "$GWORK/x/usr/bin/prometheus-pgbouncer-exporter" "$GO_EXPORTER"
    "$GO_EXPORTER" --version 2>&1 | head -n1 | sed 's/^/[setup] /' >&2
  else
    log "the Go pgbouncer_exporter could not be fetched: its functional test will skip"
  fi
  rm -rf "$GWORK"
fi

# ---- PgBouncer -----------------------------------------------------------------------
if [ -x "$PREFIX/bin/pgbouncer" ] && version_ok "$(pgb_version_of "$PREFIX/bin/pgbouncer")"; then
  log "PgBouncer $(pgb_version_of "$PREFIX/bin/pgbouncer") already built in .build/pgbouncer"
  exit 0
fi
if [ "$PGB_SUITE" = trixie ] && command -v pgbouncer >/dev/null \
   && version_ok "$(pgb_version_of "$(command -v pgbouncer)")"; then
  log "using PgBouncer $(pgb_version_of "$(command -v pgbouncer)") from PATH"
  mkdir -p "$PREFIX/bin"
  ln -sf "$(command -v pgbouncer)" "$PREFIX/bin/pgbouncer"
  exit 0
fi

log "building PgBouncer from Debian $PGB_SUITE's source package"
dpkg -s libevent-dev libc-ares-dev pkg-config libssl-dev patch make gcc >/dev/null 2>&1 \
  || apt_install libevent-dev libc-ares-dev pkg-config libssl-dev patch make gcc
need_root "the PgBouncer source"

# sid's source package could not be fetched on this machine (the archive answers 404 for its
# files, 2026-12-07: docs/image.md, "Version matrix"). Then the version matrix runs Debian's own
# build of it instead: the sid binary package and its run-time dependencies, unpacked into
# PREFIX/root, started through sid's dynamic loader with sid's libraries (it needs a newer C
# library than this machine's), behind a PREFIX/bin/pgbouncer wrapper that execs it in place.
debian_binary() {
  read -r BURI BKEYRING < <(archive_uri)
  BWORK="$(mktemp -d)"
  chmod 755 "$BWORK"
  mkdir -p "$BWORK/lists/partial" "$BWORK/cache/archives/partial"
  chown -R _apt "$BWORK/lists" "$BWORK/cache" 2>/dev/null || true
  printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: main\nArchitectures: %s\nSigned-By: %s\n' \
    "$BURI" "$PGB_SUITE" "$(dpkg --print-architecture)" "$BKEYRING" > "$BWORK/bin.sources"
  BOPTS=(-o "Dir::Etc::sourcelist=$BWORK/bin.sources" -o "Dir::Etc::sourceparts=-"
         -o "Dir::State::lists=$BWORK/lists" -o "Dir::Cache=$BWORK/cache"
         -o "Dir::State::status=/dev/null" -o "APT::Get::List-Cleanup=0")
  apt-get "${BOPTS[@]}" update -qq >/dev/null
  apt-get "${BOPTS[@]}" install --download-only --no-install-recommends -y -qq \
    "pgbouncer=$PIN_VERSION" >/dev/null 2>&1 \
    || apt-get "${BOPTS[@]}" install --download-only --no-install-recommends -y -qq \
      pgbouncer >/dev/null
  rm -rf "$PREFIX"
  mkdir -p "$PREFIX/root" "$PREFIX/bin"
  for deb in "$BWORK"/cache/archives/*.deb; do dpkg-deb -x "$deb" "$PREFIX/root"; done
  rm -rf "$BWORK"
  local lib="$PREFIX/root/usr/lib/x86_64-linux-gnu"
  cat > "$PREFIX/bin/pgbouncer" <<WRAP
#!/bin/sh
# Debian $PGB_SUITE's PgBouncer binary package, run with $PGB_SUITE's own C library and
# libraries (written by scripts/setup-system.sh; the version matrix, docs/image.md).
exec "$PREFIX/root/usr/lib64/ld-linux-x86-64.so.2" --library-path "$lib" \\
  "$PREFIX/root/usr/sbin/pgbouncer" "\$@"
WRAP
  chmod 755 "$PREFIX/bin/pgbouncer"
  chmod -R go+rX "$PREFIX"
}

# The same script builds the recommended image's PgBouncer (rockcraft.yaml).
if ! bash "$ROOT/scripts/build-pgbouncer.sh" "$PREFIX" "$PGB_SUITE" "$PIN_VERSION"; then
  [ "$PGB_SUITE" = sid ] || exit 1
  log "sid's PgBouncer source could not be fetched: using Debian's sid binary package instead"
  debian_binary
fi
version_ok "$(pgb_version_of "$PREFIX/bin/pgbouncer")" \
  || { log "$PGB_SUITE's PgBouncer is older than $MIN_VERSION"; exit 1; }
log "ready: $("$PREFIX/bin/pgbouncer" --version | head -n1) in ${PREFIX#"$ROOT"/}"
