#!/usr/bin/env bash
# Runs every client against a running server, in order; stops at the first
# failing script. Usage: run-all.sh http://127.0.0.1:PORT
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
url="${1:?usage: $0 BASE_URL}"
bash "$here/buf-curl.sh" "$url"
bash "$here/grpcurl.sh" "$url"
bash "$here/python-client.sh" "$url"
timeout 240 node "$here/browser.mjs" "$url"
echo "all clients passed against $url"
