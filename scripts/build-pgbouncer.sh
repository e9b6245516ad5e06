#!/usr/bin/env bash
# Builds PgBouncer from a Debian suite's source package, with Debian's patches (the series
# minus debian-config), the one build both the tests (scripts/setup-system.sh) and the
# recommended image (rockcraft.yaml) use.
#
#   build-pgbouncer.sh PREFIX SUITE PIN [DESTDIR]
#
# PREFIX: where PgBouncer is configured to live (.build/pgbouncer; /usr in the image).
# SUITE, PIN: the Debian suite and the source revision wanted (the suite's current one when the
#   pin is gone). DESTDIR: a staging root for `make install` (the image's part install dir);
#   without it PREFIX is replaced.
# The archive: PGB_DEBIAN_ARCHIVE (a URI) and PGB_DEBIAN_KEYRING, or else the first "deb" stanza
# of this machine's /etc/apt/sources.list.d/debian.sources. No archive host is written here.
# Needs root (apt's download sandbox) and the build dependencies installed.
set -euo pipefail
PREFIX="$1"; SUITE="$2"; PIN="$3"; DESTDIR="${4:-}"
log() { printf '[build-pgbouncer] %s\n' "$*" >&2; }

URI="${PGB_DEBIAN_ARCHIVE:-}"
KEYRING="${PGB_DEBIAN_KEYRING:-/usr/share/keyrings/debian-archive-keyring.gpg}"
if [ -z "$URI" ] && [ -r /etc/apt/sources.list.d/debian.sources ]; then
  read -r URI KEYRING < <(awk '
    /^Types:/ {t=$0} /^URIs:/ {u=$2} /^Signed-By:/ {k=$2}
    /^$/ { if (t ~ /deb( |$)/ && u != "" && !done) {print u, k; done=1} t=""; u=""; k="" }
    END { if (!done && u != "") print u, k }' /etc/apt/sources.list.d/debian.sources)
fi
[ -n "${URI:-}" ] || { log "no Debian archive: set PGB_DEBIAN_ARCHIVE (docs/image.md)"; exit 1; }
[ -r "$KEYRING" ] || { log "no keyring at $KEYRING (package debian-archive-keyring)"; exit 1; }

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
chmod 755 "$WORK"
mkdir -p "$WORK/lists/partial" "$WORK/cache/archives/partial" "$WORK/dl"
chown -R _apt "$WORK/lists" "$WORK/cache" "$WORK/dl" 2>/dev/null || true
printf 'Types: deb-src\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: %s\n' \
  "$URI" "$SUITE" "$KEYRING" > "$WORK/src.sources"
APT_OPTS=(-o "Dir::Etc::sourcelist=$WORK/src.sources" -o "Dir::Etc::sourceparts=-"
          -o "Dir::State::lists=$WORK/lists" -o "Dir::Cache=$WORK/cache"
          -o "APT::Get::List-Cleanup=0")
apt-get "${APT_OPTS[@]}" update -qq >/dev/null
cd "$WORK/dl"
if ! apt-get "${APT_OPTS[@]}" source --download-only "pgbouncer=$PIN" >/dev/null 2>&1; then
  log "pinned revision $PIN not in the archive: taking $SUITE's current pgbouncer"
  apt-get "${APT_OPTS[@]}" source --download-only pgbouncer >/dev/null
fi
ORIG="$(ls "$WORK"/dl/pgbouncer_*.orig.tar.* | head -n1)"
DEB="$(ls "$WORK"/dl/pgbouncer_*.debian.tar.* | head -n1)"
basename "$ORIG" | sed -E 's/^pgbouncer_([^.]+\.[^.]+\.[^.]+)\.orig.*/\1/' > "$WORK/upstream"

mkdir "$WORK/src"
tar -xf "$ORIG" -C "$WORK/src" --strip-components=1
tar -xf "$DEB" -C "$WORK/src"
cd "$WORK/src"
while read -r p _; do
  case "$p" in ''|'#'*|debian-config) continue ;; esac
  patch -p1 -s < "debian/patches/$p"
done < debian/patches/series
./configure --prefix="$PREFIX" --with-cares --without-systemd >/dev/null
make -j"$(nproc)" >/dev/null 2>&1
if [ -n "$DESTDIR" ]; then
  make install DESTDIR="$DESTDIR" >/dev/null
else
  rm -rf "$PREFIX"
  make install >/dev/null
fi
log "built PgBouncer $(cat "$WORK/upstream") from Debian $SUITE ($PIN wanted) into ${DESTDIR}${PREFIX}"
