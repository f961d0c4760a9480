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

# npm packages, exactly as locked.
if [ "$(cat node_modules/.install-stamp 2>/dev/null)" != "$(stamp package-lock.json)" ]; then
  echo "install.sh: npm ci"
  npm ci --no-audit --no-fund --loglevel=error
  stamp package-lock.json >node_modules/.install-stamp
fi

# The Python venv: grpcurl (binary wrapper), grpcio, grpcio-tools, openapi-spec-validator, schemathesis.
if [ "$(cat .venv/.install-stamp 2>/dev/null)" != "$(stamp requirements.txt)" ]; then
  echo "install.sh: python venv"
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
  stamp requirements.txt >.venv/.install-stamp
fi

# The client examples (examples/README.md): their own node_modules and venv.
if [ "$(cat ../../examples/typescript/node_modules/.install-stamp 2>/dev/null)" != "$(stamp ../../examples/typescript/package-lock.json)" ]; then
  echo "install.sh: npm ci (examples/typescript)"
  (cd ../../examples/typescript && npm ci --no-audit --no-fund --loglevel=error)
  stamp ../../examples/typescript/package-lock.json >../../examples/typescript/node_modules/.install-stamp
fi
if [ "$(cat ../../examples/python/.venv/.install-stamp 2>/dev/null)" != "$(stamp ../../examples/python/requirements.txt)" ]; then
  echo "install.sh: python venv (examples/python)"
  [ -x ../../examples/python/.venv/bin/python ] || python3 -m venv ../../examples/python/.venv
  ../../examples/python/.venv/bin/pip install --quiet --disable-pip-version-check -r ../../examples/python/requirements.txt
  stamp ../../examples/python/requirements.txt >../../examples/python/.venv/.install-stamp
fi

echo "install.sh: ready: buf $(node_modules/.bin/buf --version), $(.venv/bin/grpcurl -version 2>&1), $(/usr/bin/chromium --version 2>/dev/null)"
