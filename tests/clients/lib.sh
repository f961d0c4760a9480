# Shared helpers for the client scripts (sourced, not run).

# The script's name, for messages.
script_name="$(basename "$0" .sh)"

ok() { echo "ok   $script_name: $*"; }
note() { echo "note $script_name: $*"; }
fail() {
  echo "FAIL $script_name: $*" >&2
  exit 1
}

# need FILE: the tool must be installed.
need() {
  [ -x "$1" ] || fail "$1 is missing: run \`bash tests/clients/install.sh\` first"
}

# contains HAYSTACK NEEDLE WHAT: a line of HAYSTACK is exactly NEEDLE.
contains() {
  grep -qxF -- "$2" <<<"$1" || fail "$3: \"$2\" missing from:
$1"
}

# mentions TEXT PART WHAT: PART occurs somewhere in TEXT.
mentions() {
  grep -qF -- "$2" <<<"$1" || fail "$3: \"$2\" not in:
$1"
}

# call DESC CMD...: runs CMD, prints its stdout; on failure reports DESC with
# everything CMD printed and stops (the caller's set -e stops the script).
call() {
  local desc="$1" out rc
  shift
  out="$("$@" 2>&1)" && rc=0 || rc=$?
  [ "$rc" = 0 ] || fail "$desc: exit $rc:
$out"
  printf '%s\n' "$out"
}

# A name no earlier run has used.
unique() { echo "$(date +%s%N | tail -c 10)$RANDOM"; }

# hostport http://HOST:PORT[/] -> HOST:PORT
hostport() {
  local h="${1#*://}"
  echo "${h%%/*}"
}
