#!/usr/bin/env bash
# One read RPC (GetArticle) over every protocol, against the same release
# build and database: JSON over HTTP/1.1 and h2c, gRPC, gRPC-Web, Connect
# (POST and GET). h2load (Debian nghttp2-client) drives all of them with the
# same connections and duration, prints req/s and p50/p95/p99 from its
# per-request log, then each protocol's cost relative to JSON over h2c.
# A last pass on one connection shows per-call latency without queueing
# (the 40 ms Nagle/delayed-ACK stall shows up there first).
# Loopback only; every run is bounded by DURATION.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-32}
PORT=${PORT:-18182}
DB=${BENCH_DB:-conduit_bench_protocols}
PGURL=${PGURL:-postgres://postgres@127.0.0.1:5432}

command -v h2load >/dev/null || { echo "h2load is needed: apt-get install nghttp2-client"; exit 1; }
cargo build --release --quiet

psql "$PGURL/postgres" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
DATABASE_URL="$PGURL/$DB" JWT_SECRET="bench-secret-bench-secret-bench-secret" CONDUIT_LISTEN="127.0.0.1:$PORT" CONDUIT_ADMIN_LISTEN=127.0.0.1:0 \
  RATE_LIMIT=100000000/min RATE_LIMIT_CREDENTIALS=100000000/min \
  LOG_LEVEL=warn ./target/release/conduit serve &
server=$!
work=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true; rm -rf "$work"' EXIT
url="http://127.0.0.1:$PORT"
for _ in $(seq 1 50); do curl -fs "$url/api/tags" >/dev/null && break; sleep 0.2; done

# One author and one article of about 1.5 KB through the public API.
token=$(curl -fs -X POST "$url/api/users" -H 'content-type: application/json' \
  -d '{"user":{"username":"bench","email":"bench@example.com","password":"bench-password"}}' | jq -r .user.token)
body=$(python3 -c 'print("lorem ipsum dolor sit amet " * 56)')
slug=$(jq -n --arg b "$body" '{article:{title:"Protocols compared",description:"one read RPC",body:$b,tagList:["bench","rpc"]}}' |
  curl -fs -X POST "$url/api/articles" -H 'content-type: application/json' -H "authorization: Token $token" -d @- |
  jq -r .article.slug)

# GetArticleRequest{slug}: field 1, length-delimited; gRPC and gRPC-Web
# frame it with a 5-byte prefix, Connect sends it bare.
python3 - "$slug" "$work" <<'EOF'
import base64, struct, sys
slug, work = sys.argv[1].encode(), sys.argv[2]
message = b"\x0a" + bytes([len(slug)]) + slug
open(f"{work}/message.bin", "wb").write(message)
open(f"{work}/framed.bin", "wb").write(b"\x00" + struct.pack(">I", len(message)) + message)
open(f"{work}/get-query", "w").write(base64.urlsafe_b64encode(message).decode().rstrip("="))
EOF
query=$(cat "$work/get-query")

results="$work/results"
# run NAME H2LOAD-ARGS...: one bounded load, summarised from h2load's log.
run() {
  local name=$1
  shift
  local log="$work/log" out
  rm -f "$log" # h2load appends to an existing log
  out=$(h2load -c "$CONNECTIONS" -m 1 -D "$DURATION" --warm-up-time=2 --log-file="$log" "$@" 2>&1) ||
    { echo "$name: h2load failed: $out"; exit 1; }
  python3 - "$name" "$log" <<'EOF' >>"$results"
import sys
name, log = sys.argv[1], sys.argv[2]
rows = [line.split("\t") for line in open(log) if line.strip()]
ok = [int(r[2]) for r in rows if r[1] == "200"]
bad = len(rows) - len(ok)
ok.sort()
def pct(p):
    return ok[min(len(ok) - 1, int(len(ok) * p))] / 1000 if ok else float("nan")
start = min(int(r[0]) for r in rows)
end = max(int(r[0]) + int(r[2]) for r in rows)
rps = len(rows) / ((end - start) / 1e6)
print(f"{name}\t{rps:.0f}\t{pct(0.50):.2f}\t{pct(0.95):.2f}\t{pct(0.99):.2f}\t{bad}")
EOF
}

grpc_headers=(-H 'content-type: application/grpc' -H 'te: trailers')
scenarios() {
  run "JSON HTTP/1.1 GET" --h1 "$url/api/articles/$slug"
  run "JSON h2c GET" "$url/api/articles/$slug"
  run "gRPC" "${grpc_headers[@]}" -d "$work/framed.bin" "$url/conduit.v1.Articles/GetArticle"
  run "gRPC-Web h2c" -H 'content-type: application/grpc-web+proto' -H 'x-grpc-web: 1' -d "$work/framed.bin" \
    "$url/conduit.v1.Articles/GetArticle"
  run "gRPC-Web HTTP/1.1" --h1 -H 'content-type: application/grpc-web+proto' -H 'x-grpc-web: 1' \
    -d "$work/framed.bin" "$url/conduit.v1.Articles/GetArticle"
  run "Connect proto POST" -H 'content-type: application/proto' -d "$work/message.bin" \
    "$url/conduit.v1.Articles/GetArticle"
  run "Connect GET" "$url/conduit.v1.Articles/GetArticle?encoding=proto&base64=1&message=$query"
}

# Warm-up, not reported: the pool fills and statements are prepared.
h2load -c "$CONNECTIONS" -D 2 "$url/api/articles/$slug" >/dev/null
scenarios
rss=$(awk '/VmHWM/ {print $2, $3}' "/proc/$server/status")
report() {
  python3 - "$results" <<'EOF'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
base = next((float(r[1]) for r in rows if r[0] == "JSON h2c GET"), None)
print(f"{'protocol':22} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'non-200':>8} {'vs JSON h2c':>12}")
for name, rps, p50, p95, p99, bad in rows:
    ratio = f"{float(rps) / base:.2f}x" if base else "-"
    print(f"{name:22} {rps:>8} {p50:>8} {p95:>8} {p99:>8} {bad:>8} {ratio:>12}")
EOF
}
echo
echo "GetArticle, $CONNECTIONS connections, ${DURATION}s each ($(nproc) cores shared by h2load, server and Postgres):"
report
echo "server peak RSS: $rss"

# One connection, one call at a time: per-call latency without queueing.
: >"$results"
CONNECTIONS=1
scenarios
echo
echo "GetArticle, 1 connection, sequential calls:"
report
