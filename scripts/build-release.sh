#!/usr/bin/env bash
# The release build, the same everywhere: `.ci/run` and the Dockerfile run
# this script, so the image holds what CI tested.
set -euo pipefail
cd "$(dirname "$0")/.."
# Queries are checked against `.sqlx/` (no database at build time).
export SQLX_OFFLINE=true
exec cargo build --release --locked --bin conduit "$@"
