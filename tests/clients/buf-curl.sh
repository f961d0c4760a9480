#!/usr/bin/env bash
# buf curl (connect-go inside) against the server, with the schema taken from
# the server's own reflection: no .proto file is read.
# Usage: buf-curl.sh http://127.0.0.1:PORT
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"
url="${1:?usage: $0 BASE_URL}"
url="${url%/}"
need "$here/node_modules/.bin/buf"
bufx() { timeout 60 "$here/node_modules/.bin/buf" "$@"; }
buf() { call "buf $*" bufx "$@"; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Reflection works over gRPC and gRPC-Web (both HTTP/2: buf curl needs
# full-duplex bidi streaming for reflection).
for proto in grpc grpcweb; do
  flags=(--protocol "$proto" --http2-prior-knowledge)
  services="$(buf curl "${flags[@]}" --list-services "$url")"
  for s in conduit.v1.Articles conduit.v1.Comments conduit.v1.Profiles conduit.v1.Tags conduit.v1.Users grpc.health.v1.Health; do
    contains "$services" "$s" "buf curl --protocol $proto --list-services"
  done
  methods="$(buf curl "${flags[@]}" --list-methods "$url")"
  for m in conduit.v1.Articles/GetArticle conduit.v1.Users/Register conduit.v1.Tags/ListTags grpc.health.v1.Health/Check; do
    contains "$methods" "$m" "buf curl --protocol $proto --list-methods"
  done
  ok "$proto: reflection lists services and methods"
done

# The Connect protocol: buf curl reflects with the protocol it calls with, and
# the server serves reflection (a bidi stream) over gRPC and gRPC-Web only, not
# as a Connect stream. When Connect reflection answers, use it; otherwise take
# the schema from the server's reflection over gRPC (grpcurl -protoset-out)
# and say so.
connect_schema=()
if bufx curl --protocol connect --list-services "$url" >"$work/connect-list" 2>&1; then
  contains "$(cat "$work/connect-list")" conduit.v1.Articles "buf curl --protocol connect --list-services"
  ok "connect: reflection lists services"
else
  mentions "$(cat "$work/connect-list")" "unimplemented: HTTP status 404" "buf curl --protocol connect --list-services"
  need "$here/.venv/bin/grpcurl"
  call "grpcurl -protoset-out" timeout 60 "$here/.venv/bin/grpcurl" -plaintext -protoset-out "$work/schema.binpb" "$(hostport "$url")" list >/dev/null
  connect_schema=(--schema "$work/schema.binpb")
  services="$(buf curl --protocol connect "${connect_schema[@]}" --list-services)"
  contains "$services" conduit.v1.Articles "buf curl --schema (from reflection) --list-services"
  gap "connect: reflection is not served over the Connect protocol (a bidi stream: HTTP 404); schema taken from gRPC reflection"
fi

for proto in grpc grpcweb connect; do
  case "$proto" in
    connect) flags=(--protocol connect "${connect_schema[@]}") ;; # HTTP/1.1
    *) flags=(--protocol "$proto" --http2-prior-knowledge) ;;
  esac

  tags="$(buf curl "${flags[@]}" -d '{}' "$url/conduit.v1.Tags/ListTags")"
  # An empty tag list is printed as {}; otherwise tags is an array.
  jq -e '(.tags // []) | type == "array"' <<<"$tags" >/dev/null || fail "buf curl $proto ListTags: unexpected answer: $tags"

  name="buf_${proto}_$(unique)"
  body="$(printf '{"user":{"username":"%s","email":"%s@example.com","password":"secret-password"}}' "$name" "$name")"
  reg="$(buf curl "${flags[@]}" -d "$body" "$url/conduit.v1.Users/Register")"
  [ "$(jq -r .user.username <<<"$reg")" = "$name" ] || fail "buf curl $proto Register: unexpected answer: $reg"
  token="$(jq -r .user.token <<<"$reg")"
  [ -n "$token" ] && [ "$token" != null ] || fail "buf curl $proto Register: no token in $reg"

  me="$(buf curl "${flags[@]}" -H "authorization: Token $token" -d '{}' "$url/conduit.v1.Users/GetCurrentUser")"
  [ "$(jq -r .user.email <<<"$me")" = "$name@example.com" ] || fail "buf curl $proto GetCurrentUser: unexpected answer: $me"

  # A failed RPC exits with the gRPC code << 3 (NOT_FOUND = 5 -> 40) and
  # prints the Connect error JSON.
  set +e
  err="$(bufx curl "${flags[@]}" -d '{"slug":"no-such"}' "$url/conduit.v1.Articles/GetArticle" 2>&1)"
  rc=$?
  set -e
  [ "$rc" = 40 ] || fail "buf curl $proto GetArticle(no-such): exit $rc, wanted 40 (NOT_FOUND): $err"
  [ "$(jq -r .code <<<"$err")" = not_found ] || fail "buf curl $proto GetArticle(no-such): wanted code not_found: $err"
  ok "$proto: ListTags, Register, GetCurrentUser with token, NOT_FOUND as not_found"
done
