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

# Reflection (a bidirectional stream: buf curl needs HTTP/2 for it) over
# each protocol; Connect's is relayed by the gateway to tonic's reflection.
for proto in grpc grpcweb connect; do
  flags=(--protocol "$proto" --http2-prior-knowledge)
  services="$(buf curl "${flags[@]}" --list-services "$url")"
  for s in conduit.v1.Articles conduit.v1.Comments conduit.v1.Profiles conduit.v1.Tags conduit.v1.Users grpc.health.v1.Health; do
    contains "$services" "$s" "buf curl --protocol $proto --list-services"
  done
  methods="$(buf curl "${flags[@]}" --list-methods "$url")"
  for m in conduit.v1.Articles/GetArticle conduit.v1.Users/Register conduit.v1.Tags/ListTags grpc.health.v1.Health/Check; do
    contains "$methods" "$m" "buf curl --protocol $proto --list-methods"
  done
  health="$(buf curl "${flags[@]}" -d '{}' "$url/grpc.health.v1.Health/Check")"
  [ "$(jq -r .status <<<"$health")" = SERVING ] || fail "buf curl $proto Health/Check: unexpected answer: $health"
  ok "$proto: reflection lists services and methods; Health/Check is SERVING"
done

for proto in grpc grpcweb connect; do
  case "$proto" in
    connect) flags=(--protocol connect) ;; # HTTP/1.1: unary calls need no HTTP/2
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
