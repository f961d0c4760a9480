#!/usr/bin/env bash
# grpcurl 1.8.6 (grpc-go inside; it knows only reflection v1alpha) against the
# server over plaintext HTTP/2.
# Usage: grpcurl.sh http://127.0.0.1:PORT
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"
url="${1:?usage: $0 BASE_URL}"
addr="$(hostport "$url")"
need "$here/.venv/bin/grpcurl"
grpcurl() { call "grpcurl $*" timeout 60 "$here/.venv/bin/grpcurl" -plaintext "$@"; }

services="$(grpcurl "$addr" list)"
for s in conduit.v1.Articles conduit.v1.Comments conduit.v1.Profiles conduit.v1.Tags conduit.v1.Users grpc.health.v1.Health grpc.reflection.v1alpha.ServerReflection; do
  contains "$services" "$s" "grpcurl list"
done
contains "$(grpcurl "$addr" list conduit.v1.Users)" conduit.v1.Users.GetCurrentUser "grpcurl list conduit.v1.Users"
ok "list shows every service over reflection v1alpha"

for service in "" conduit.v1.Articles; do
  # Services are reported after the server's first database check (right
  # after start): allow it up to 50 tries, 0.2 s apart.
  for _ in $(seq 50); do
    health="$(timeout 10 "$here/.venv/bin/grpcurl" -plaintext -d "{\"service\":\"$service\"}" "$addr" grpc.health.v1.Health/Check 2>&1)" &&
      [ "$(jq -r .status <<<"$health" 2>/dev/null)" = SERVING ] && break
    sleep 0.2
  done
  [ "$(jq -r .status <<<"$health" 2>/dev/null)" = SERVING ] || fail "grpcurl Health/Check($service): $health"
done
ok "grpc.health.v1.Health/Check answers SERVING (server and conduit.v1.Articles)"

described="$(grpcurl "$addr" describe conduit.v1.Articles)"
mentions "$described" "conduit.v1.Articles is a service:" "grpcurl describe conduit.v1.Articles"
mentions "$described" "rpc GetArticle ( .conduit.v1.GetArticleRequest ) returns ( .conduit.v1.SingleArticleResponse )" "grpcurl describe conduit.v1.Articles"
# The descriptors include the dependencies' options (google.api.http).
mentions "$described" '(.google.api.http) = { get:"/api/articles/{slug}"' "grpcurl describe conduit.v1.Articles"
message="$(grpcurl "$addr" describe conduit.v1.NewArticle)"
mentions "$message" "repeated string tag_list = 4" "grpcurl describe conduit.v1.NewArticle"
ok "describe conduit.v1.Articles shows its methods and HTTP rules"

tags="$(grpcurl -d '{}' "$addr" conduit.v1.Tags/ListTags)"
jq -e '(.tags // []) | type == "array"' <<<"$tags" >/dev/null || fail "grpcurl ListTags: $tags"
# grpcurl exits with 64 + the gRPC code (NOT_FOUND = 5).
set +e
err="$(timeout 60 "$here/.venv/bin/grpcurl" -plaintext -d '{"slug":"no-such"}' "$addr" conduit.v1.Articles/GetArticle 2>&1)"
rc=$?
set -e
[ "$rc" = 69 ] || fail "grpcurl GetArticle(no-such): exit $rc, wanted 69 (NOT_FOUND): $err"
mentions "$err" "Code: NotFound" "grpcurl GetArticle(no-such)"
ok "ListTags answers, GetArticle(no-such) fails with NotFound"
