#!/usr/bin/env bash
# Installs what the client tests need, inside tests/clients (nothing global
# but Debian's chromium): node_modules from package-lock.json, a Python venv
# from requirements.txt, and the same for each of examples/. Re-running is quick: each part is skipped while the
# lock file it was installed from is unchanged.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"

stamp() { sha256sum "$1" | cut -d' ' -f1; }

# Debian's Chromium (for browser.mjs) and jq (for the shell scripts).
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v jq >/dev/null || missing+=(jq)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install.sh: apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# npm packages of DIR, exactly as its package-lock.json says.
npm_install() {
  if [ "$(cat "$1/node_modules/.install-stamp" 2>/dev/null)" != "$(stamp "$1/package-lock.json")" ]; then
    echo "install.sh: npm ci ($1)"
    (cd "$1" && npm ci --no-audit --no-fund --loglevel=error)
    stamp "$1/package-lock.json" >"$1/node_modules/.install-stamp"
  fi
}

# A Python venv in DIR/.venv from DIR/requirements.txt.
venv_install() {
  if [ "$(cat "$1/.venv/.install-stamp" 2>/dev/null)" != "$(stamp "$1/requirements.txt")" ]; then
    echo "install.sh: python venv ($1)"
    [ -x "$1/.venv/bin/python" ] || python3 -m venv "$1/.venv"
    "$1/.venv/bin/pip" install --quiet --disable-pip-version-check -r "$1/requirements.txt"
    stamp "$1/requirements.txt" >"$1/.venv/.install-stamp"
  fi
}

# The client tests: buf, Connect-ES, esbuild, playwright-core; grpcurl
# (binary wrapper), grpcio, grpcio-tools, openapi-spec-validator, schemathesis.
npm_install .
venv_install .
# The client examples (examples/README.md): their own node_modules and venv.
npm_install ../../examples/typescript
venv_install ../../examples/python

echo "install.sh: ready: buf $(node_modules/.bin/buf --version), $(.venv/bin/grpcurl -version 2>&1), $(/usr/bin/chromium --version 2>/dev/null)"
