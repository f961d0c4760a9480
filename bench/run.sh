#!/usr/bin/env bash
# Benchmark: seeds a fresh database through the public JSON API, then drives
# a release build with wrk (-t1 -c32 -d15s --latency by default) and prints
# req/s, p50, p99, non-2xx and the server's peak RSS per scenario.
# Loopback only; every run is bounded by DURATION.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-15s}
CONNECTIONS=${CONNECTIONS:-32}
PORT=${PORT:-18181}
DB=${BENCH_DB:-conduit_bench}
PGURL=${PGURL:-postgres://postgres@127.0.0.1:5432}

command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk"; exit 1; }
cargo build --release --quiet

psql "$PGURL/postgres" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
DATABASE_URL="$PGURL/$DB" JWT_SECRET="bench-secret-bench-secret-bench-secret" CONDUIT_LISTEN="127.0.0.1:$PORT" CONDUIT_ADMIN_LISTEN=127.0.0.1:0 \
  RATE_LIMIT=100000000/min RATE_LIMIT_CREDENTIALS=100000000/min \
  LOG_LEVEL=warn ./target/release/conduit serve &
server=$!
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do curl -fs "http://127.0.0.1:$PORT/api/tags" >/dev/null && break; sleep 0.2; done

state=bench/.state.json
python3 bench/seed.py "$PORT" "$state"
# Settle the database after seeding (statistics, visibility map, dirty pages)
# so that the first scenario does not pay for the seeding's aftermath.
psql "$PGURL/$DB" -qc "VACUUM ANALYZE" -c "CHECKPOINT"
# Seeding hashes 300 passwords (argon2id, 19 MiB each while it runs): report
# its peak apart, then reset the high-water mark for the load phase.
seed_rss=$(awk '/VmHWM/ {print $2, $3}' "/proc/$server/status")
echo 5 >"/proc/$server/clear_refs"
reader=$(python3 -c "import json;print(json.load(open('$state'))['reader'])")
slug=$(python3 -c "import json;print(json.load(open('$state'))['slugs'][0])")
fan=$(python3 -c "import json;print(json.load(open('$state'))['fan'])")
python3 -c "
import json; s = json.load(open('$state'))
open('bench/.wrk-mix.txt', 'w').write(' '.join(s['tokens']) + '\n' + ' '.join(s['slugs']) + '\n')"

url="http://127.0.0.1:$PORT"
results=$(mktemp)
run() { # name, wrk args...
  local name=$1; shift
  local out
  out=$(wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency "$@")
  local rps p50 p99 non2xx errors
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
  non2xx=$(awk -F': ' '/Non-2xx or 3xx responses/ {print $2}' <<<"$out")
  errors=$(awk '/Socket errors/ {print $0}' <<<"$out")
  printf '%-26s %10s %10s %10s %8s  %s\n' "$name" "$rps" "$p50" "$p99" "${non2xx:-0}" "$errors" >>"$results"
}
# Warm-up, not reported: connections fill the pool and prepare statements.
wrk -t1 -c"$CONNECTIONS" -d3s "$url/api/articles" >/dev/null
run "list articles (anonymous)" "$url/api/articles"
run "list articles (token)" -H "Authorization: Token $reader" "$url/api/articles"
run "list by tag" "$url/api/articles?tag=tag7"
run "list by favorited" "$url/api/articles?favorited=$fan"
run "feed (follows 20)" -H "Authorization: Token $reader" "$url/api/articles/feed"
run "single article" "$url/api/articles/$slug"
run "tags" "$url/api/tags"
MIX_FILE=bench/.wrk-mix.txt run "favorite/unfavorite mix" -s bench/favorite-mix.lua "$url"

rss=$(awk '/VmHWM/ {print $2, $3}' "/proc/$server/status")
echo
printf '%-26s %10s %10s %10s %8s\n' "scenario" "req/s" "p50" "p99" "non-2xx"
cat "$results"
echo "server peak RSS under load: $rss; while seeding (password hashing): $seed_rss"
echo " (wrk -t1 -c$CONNECTIONS -d$DURATION, $(nproc) cores shared by wrk, server and Postgres)"
