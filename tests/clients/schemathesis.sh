#!/usr/bin/env bash
# schemathesis (PyPI) against the served /openapi.json: generated requests to
# every operation, anonymous and with a token, checked for server errors,
# undocumented statuses, responses that break their schema and invalid input
# that is accepted. Bounded by --max-examples and the caller's time limit.
# Usage: schemathesis.sh http://127.0.0.1:PORT
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"
url="${1:?usage: $0 BASE_URL}"
url="${url%/}"
need "$here/.venv/bin/schemathesis"

name="st$(unique)"
token="$(curl -fsS -X POST "$url/api/users" -H 'content-type: application/json' \
  -d "{\"user\":{\"username\":\"$name\",\"email\":\"$name@example.com\",\"password\":\"password1\"}}" | jq -r .user.token)"
[ -n "$token" ] && [ "$token" != null ] || fail "could not register a user for the run"

checks=not_a_server_error,status_code_conformance,response_schema_conformance,negative_data_rejection
# Reports and the example database go to a scratch directory.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
# The notification watch never ends by design (its tests are in tests/api/background.rs).
call "schemathesis" "$here/.venv/bin/schemathesis" run "$url/openapi.json" --url "$url" \
  --checks "$checks" --max-examples 25 --seed 1 --no-color --exclude-path-regex 'notifications:watch$' \
  -H "Authorization: Token $token" | tail -n 25
ok "every operation passed $checks"
