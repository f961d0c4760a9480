#!/usr/bin/env bash
# Generates both examples and runs them against a running conduit, with the
# commands README.md gives after the installs (which tests/clients/install.sh
# does). Usage: check.sh http://127.0.0.1:PORT
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
url="${1:?usage: $0 BASE_URL}"

cd "$here/typescript"
[ -d node_modules ] || { echo "examples/typescript: run npm ci (or bash tests/clients/install.sh)" >&2; exit 1; }
npm run --silent generate
npm run --silent build
npm start --silent -- "$url"
echo "ok   examples/typescript"

cd "$here/python"
[ -x .venv/bin/python ] || { echo "examples/python: create .venv (or bash tests/clients/install.sh)" >&2; exit 1; }
npx -y @bufbuild/buf@1.75.0 generate
.venv/bin/python client.py "${url#http://}"
echo "ok   examples/python"
