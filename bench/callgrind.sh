#!/usr/bin/env bash
# Instructions per request of conduit on one endpoint, by function, from
# valgrind's callgrind: repeatable where timings here are not.
#
#   bench/callgrind.sh DATABASE_URL PATH [REQUESTS] [TOKEN]
#
# Runs target/release/conduit (or $CONDUIT_BIN) under callgrind on an
# existing, seeded database (bench/seed.py) with the cache and the job
# workers off, warms it with 200 requests, zeroes the counters, sends
# REQUESTS (default 1000) GETs of PATH over one keep-alive connection
# (with `Authorization: Token TOKEN` if given), dumps, and prints
# instructions per request and the functions that cost the most
# (inclusive). Loopback only; bounded by the request count.
set -euo pipefail

url=${1:?DATABASE_URL of a seeded database}
path=${2:?the path to request, e.g. /api/articles}
requests=${3:-1000}
token=${4:-}
root=$(cd "$(dirname "$0")/.." && pwd)
binary=${CONDUIT_BIN:-$root/target/release/conduit}
out=$(mktemp -d /tmp/conduit-callgrind.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

command -v valgrind >/dev/null || { echo "valgrind is needed: apt-get install valgrind" >&2; exit 1; }

DATABASE_URL=$url JWT_SECRET=${JWT_SECRET:-prof-secret-prof-secret-prof-secret-prof} \
  CONDUIT_LISTEN=127.0.0.1:$port CONDUIT_ADMIN_LISTEN=127.0.0.1:0 CACHE_TTL=0s JOB_WORKERS=0 \
  RATE_LIMIT=100000000/min RATE_LIMIT_CREDENTIALS=100000000/min LOG_LEVEL=warn DRAIN_DELAY=0s \
  valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.out" --collect-atstart=yes \
  "$binary" serve >"$out/conduit.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT

send() {
  python3 - "$port" "$path" "$1" "$token" <<'EOF'
import http.client, sys, time
port, path, n, token = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
deadline = time.time() + 120
while True:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("GET", "/api/tags")
        conn.getresponse().read()
        break
    except OSError:
        if time.time() > deadline:
            sys.exit("conduit did not start under valgrind")
        time.sleep(0.5)
headers = {"authorization": "Token " + token} if token else {}
for _ in range(n):
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    response.read()
    if response.status != 200:
        sys.exit(f"GET {path} -> {response.status}")
EOF
}

send 200
callgrind_control -z "$pid" >/dev/null
send "$requests"
callgrind_control -d "$pid" >/dev/null
# The dump just written (the final one, at exit, holds the shutdown).
dump=$(ls -t "$out"/callgrind.out* | head -1)
kill -TERM "$pid"
wait "$pid" || true
trap - EXIT

total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}')
echo "instructions per request: $((total / requests)) ($requests requests of GET $path)"
callgrind_annotate --inclusive=yes --threshold=99 "$dump" 2>/dev/null | sed -n '/^Ir/,$p' | head -60
echo "full profile: $dump"
