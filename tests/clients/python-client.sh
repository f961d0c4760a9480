#!/usr/bin/env bash
# Runs python-client.py with the venv's grpcio and grpcio-tools.
# Usage: python-client.sh http://127.0.0.1:PORT
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"
need "$here/.venv/bin/python"
"$here/.venv/bin/python" -c 'import grpc, grpc_tools' 2>/dev/null ||
  fail "grpcio/grpcio-tools missing from $here/.venv: run \`bash tests/clients/install.sh\` first"
exec timeout 120 "$here/.venv/bin/python" "$here/python-client.py" "${1:?usage: $0 BASE_URL}"
