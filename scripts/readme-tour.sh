#!/usr/bin/env bash
# Follows README.md literally, as a newcomer would, on a fresh data
# directory: starts the service with README's run command (the first `sh`
# block under "The two commands"), waits until it answers, then runs the
# `sh tour` block line by line in one shell. Every command must succeed;
# curl is run with --fail-with-body, so an HTTP error fails the tour too.
# Prints how long the first answer took. Loopback only (the tour calls
# localhost:8080); bounded by timeouts.
set -euo pipefail
cd "$(dirname "$0")/.."

run=$(awk '/^## The two commands/ {section = 1} section && /^```sh$/ {getline; print; exit}' README.md)
tour=$(awk '/^```sh tour$/ {inside = 1; next} inside && /^```$/ {exit} inside' README.md)
[ -n "$run" ] && [ -n "$tour" ] || { echo "README.md has no run command or no tour block" >&2; exit 1; }

data=$(mktemp -d /tmp/conduit-tour.XXXXXX)
log="$data.log"
started=$(date +%s%N)
echo "== $run (CONDUIT_DATA_DIR=$data)"
CONDUIT_DATA_DIR=$data setsid bash -c "exec $run" >"$log" 2>&1 &
server=$!
cleanup() {
  kill -TERM -- "-$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  rm -rf "$data" "$log"
}
trap cleanup EXIT

for _ in $(seq 1 1200); do
  curl -fs -o /dev/null localhost:8080/api/tags && break
  kill -0 "$server" 2>/dev/null || { tail -n 30 "$log"; echo "the service stopped" >&2; exit 1; }
  sleep 0.5
done
curl -fs -o /dev/null localhost:8080/api/tags || { tail -n 30 "$log"; echo "no answer on :8080" >&2; exit 1; }
echo "== first answer after $(( ($(date +%s%N) - started) / 1000000 )) ms"

echo "== the tour"
# The tour's own commands (`conduit demo`) find the service's data directory
# as the service did: the newcomer's default is the same for both.
CONDUIT_DATA_DIR=$data timeout 300 bash -euo pipefail -c "curl() { command curl --fail-with-body \"\$@\"; }
$tour"
echo "== the tour passed"
