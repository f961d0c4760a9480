#!/usr/bin/env bash
# Prints the path of a PgBouncer that can pool conduit in transaction mode,
# building it once per machine when none is there. Debian 12 packages 1.18,
# which cannot (protocol-level prepared statements arrived in 1.21), so the
# 1.24.1 source Debian itself ships is built into the user's cache and
# reused afterwards (about a minute on 2 cores; needs libevent-dev).
set -euo pipefail
version=1.24.1
sha256=da72a3aba13072876d055a3e58dd4aba4a5de4ed6148e73033185245598fd3e0
prefix="${XDG_CACHE_HOME:-$HOME/.cache}/conduit/pgbouncer-$version"
binary="$prefix/bin/pgbouncer"

if [ -x "$binary" ]; then
  echo "$binary"
  exit 0
fi

{
  missing=()
  dpkg -s libevent-dev >/dev/null 2>&1 || missing+=(libevent-dev)
  command -v pkg-config >/dev/null || missing+=(pkg-config)
  command -v make >/dev/null || missing+=(make)
  command -v cc >/dev/null || missing+=(gcc)
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "install-pgbouncer.sh: apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  cd "$work"
  curl -fsSL -o src.tar.gz "http://deb.debian.org/debian/pool/main/p/pgbouncer/pgbouncer_${version}.orig.tar.gz"
  echo "$sha256  src.tar.gz" | sha256sum --check --quiet
  tar xzf src.tar.gz
  cd "pgbouncer-$version"
  echo "install-pgbouncer.sh: building PgBouncer $version into $prefix"
  # No TLS (loopback only), no c-ares (resolves with libevent's resolver).
  ./configure --quiet --prefix="$prefix" --without-openssl --without-cares >/dev/null
  make --quiet -j"$(nproc)" >/dev/null 2>&1
  make --quiet install >/dev/null
} >&2
"$binary" --version >&2
echo "$binary"
