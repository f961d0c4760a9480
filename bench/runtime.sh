#!/usr/bin/env bash
# The production runtime's costs, as ratios measured in one run (this
# machine's absolute timings drift 2-3x hour to hour):
#   1. the article list's own database work, by pgbench on the seeded
#      database (the ceiling the service cannot beat);
#   2. GET /api/articles through the whole stack, cache off;
#   3. the same with only the layers the API needs (MIDDLEWARE=minimal);
#   4. the same with the whole stack and the response cache on;
#   5. the whole stack with tracing configured but sampling off.
# Prints req/s, p50, p99 and errors per scenario, then the ratios against
# the targets. Loopback only; every load is bounded by DURATION.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-15s}
CONNECTIONS=${CONNECTIONS:-32}
PORT=${PORT:-18182}
DB=${BENCH_DB:-conduit_bench_runtime}
PGURL=${PGURL:-postgres://postgres@127.0.0.1:5432}
POOL=${DB_MAX_CONNECTIONS:-16}

command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk"; exit 1; }
command -v pgbench >/dev/null || { echo "pgbench is needed (postgresql-contrib or postgresql client)"; exit 1; }
cargo build --release --quiet

psql "$PGURL/postgres" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
server=""
stop() { if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; server=""; fi; }
trap stop EXIT
start() { # extra environment, as NAME=value words
  env DATABASE_URL="$PGURL/$DB" JWT_SECRET="bench-secret-bench-secret-bench-secret" \
    CONDUIT_LISTEN="127.0.0.1:$PORT" CONDUIT_ADMIN_LISTEN=127.0.0.1:0 DRAIN_DELAY=0s \
    RATE_LIMIT=100000000/min RATE_LIMIT_CREDENTIALS=100000000/min DB_MAX_CONNECTIONS="$POOL" \
    LOG_LEVEL=warn "$@" ./target/release/conduit serve 2>/dev/null &
  server=$!
  for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$PORT/api/tags" >/dev/null && return; sleep 0.1; done
  echo "the server did not start"; exit 1
}

start CACHE_TTL=0s
state=bench/.state-runtime.json
python3 bench/seed.py "$PORT" "$state"
psql "$PGURL/$DB" -qc "VACUUM ANALYZE" -c "CHECKPOINT"
stop

results=$(mktemp)
url="http://127.0.0.1:$PORT/api/articles"
measure() { # name
  local out rps p50 p99 non2xx errors
  wrk -t1 -c"$CONNECTIONS" -d3s "$url" >/dev/null # warm-up: pool filled, statements prepared
  out=$(wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency "$url")
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
  non2xx=$(awk -F': ' '/Non-2xx or 3xx responses/ {print $2}' <<<"$out")
  errors=$(awk '/Socket errors/ {print $0}' <<<"$out")
  printf '%s|%s|%s|%s|%s|%s\n' "$1" "$rps" "$p50" "$p99" "${non2xx:-0}" "${errors:-none}" >>"$results"
}

# 1. The list's database work: the one statement an anonymous
#    GET /api/articles runs (the page of ids and its articles), prepared.
page=$(mktemp --suffix=.sql)
cat >"$page" <<'SQL'
WITH page AS (SELECT COALESCE((SELECT count FROM article_totals), 0)::int8 AS total, ARRAY(SELECT d.id FROM articles d ORDER BY d.created_at DESC, d.id DESC LIMIT 20 OFFSET 0) AS ids) SELECT page.total, a.id, a.slug, a.title, a.description, a.tag_list, a.created_at, a.updated_at, a.favorites_count, u.username, u.bio, u.image, COALESCE((SELECT true FROM favorites f WHERE f.user_id = 0 AND f.article_id = a.id), false) AS favorited, COALESCE((SELECT true FROM follows fo WHERE fo.follower_id = 0 AND fo.followee_id = a.author_id), false) AS following FROM page LEFT JOIN articles a ON a.id = ANY(page.ids) LEFT JOIN users u ON u.id = a.author_id ORDER BY array_position(page.ids, a.id);
SQL
pg=$(pgbench -n -M prepared -c "$POOL" -j 2 -T "${DURATION%s}" -f "$page" "$PGURL/$DB" 2>/dev/null)
pg_tps=$(awk '/^tps/ {print $3; exit}' <<<"$pg")
pg_lat=$(awk '/^latency average/ {print $4}' <<<"$pg")
rm -f "$page"

start CACHE_TTL=0s
measure "whole stack, cache off"
stop
start CACHE_TTL=0s MIDDLEWARE=minimal
measure "minimal stack, cache off"
stop
start CACHE_TTL=0s OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 OTEL_TRACES_SAMPLER=always_off
measure "whole stack + tracing (off)"
stop
start CACHE_TTL=5s
measure "whole stack, cache on"
rss=$(awk '/VmHWM/ {print $2, $3}' "/proc/$server/status")
stop

echo
printf '%-30s %10s %10s %10s %8s  %s\n' "scenario" "req/s" "p50" "p99" "non-2xx" "socket errors"
printf '%-30s %10s %10s %10s %8s\n' "pgbench: the list's query" "$pg_tps" "${pg_lat}ms" "-" "-"
while IFS='|' read -r name rps p50 p99 non2xx errors; do
  printf '%-30s %10s %10s %10s %8s  %s\n' "$name" "$rps" "$p50" "$p99" "$non2xx" "$errors"
done <"$results"
python3 - "$results" "$pg_tps" <<'PY'
import sys
rows = {}
for line in open(sys.argv[1]):
    name, rps, p50, p99, non2xx, errors = line.rstrip("\n").split("|")
    def ms(v):
        return float(v[:-2]) if v.endswith("ms") else float(v[:-2]) / 1000 if v.endswith("us") else float(v[:-1]) * 1000
    rows[name] = (float(rps), ms(p50), ms(p99), int(non2xx), errors)
pg = float(sys.argv[2])
full = rows["whole stack, cache off"]
bare = rows["minimal stack, cache off"]
traced = rows["whole stack + tracing (off)"]
cached = rows["whole stack, cache on"]
print()
print(f"uncached list / pgbench ceiling : {full[0] / pg:6.2f}  (target >= 0.60)")
print(f"cached list / uncached list     : {cached[0] / full[0]:6.2f}  (target >= 5)")
print(f"whole stack cost on the list    : {100 * (1 - full[0] / bare[0]):5.1f} %  (target < 10 %)")
print(f"  with tracing configured (off) : {100 * (1 - traced[0] / bare[0]):5.1f} %")
for name, (rps, p50, p99, non2xx, errors) in rows.items():
    print(f"p99/p50 {name:28}: {p99 / p50:5.2f}  (target <= 3)  non-2xx {non2xx}  socket errors {errors}")
PY
echo "server peak RSS (cache on): $rss"
echo " (wrk -t1 -c$CONNECTIONS -d$DURATION; pgbench -c$POOL -j2; $(nproc) cores shared by the load, server and Postgres)"
