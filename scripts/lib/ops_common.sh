#!/usr/bin/env bash
# Shared by the operator scripts (smoke, go_no_go, daily_health_check,
# backup_now, restore): finding the CLI, stopping at once with one line when
# a tool or the token is missing, and reading JSON. Sourced; expects
# SCRIPT_NAME (the prefix of every line) and the repository root as $PWD.
# Nothing here expands a secret: under `set -x` the token's presence is
# tested through ${VAR:+set}, never its value.

# One line on stderr naming what is missing and how to get it; exit 2.
missing() { # what how
  echo "$SCRIPT_NAME: $1 not found: $2" >&2
  exit 2
}

need_tool() { # tool how-to-get-it
  command -v "$1" >/dev/null 2>&1 || missing "$1" "$2"
}

# The opsloop CLI: $OPSLOOP_BIN, else opsloop on PATH, else a built one.
find_cli() {
  if [[ -n "${OPSLOOP_BIN:-}" ]]; then
    CLI="$OPSLOOP_BIN"
    [[ -x "$CLI" ]] || command -v "$CLI" >/dev/null 2>&1 ||
      missing "opsloop ($CLI from OPSLOOP_BIN)" "point OPSLOOP_BIN at the opsloop binary"
  elif command -v opsloop >/dev/null 2>&1; then
    CLI=opsloop
  elif [[ -x target/release/opsloop ]]; then
    CLI=target/release/opsloop
  elif [[ -x target/debug/opsloop ]]; then
    CLI=target/debug/opsloop
  else
    missing opsloop "put it on PATH, set OPSLOOP_BIN, or build it: cargo build --release -p opsloop-cli"
  fi
}

# The admin token must be given: OPSLOOP_TOKEN_FILE (readable) or
# OPSLOOP_TOKEN; an explicitly empty OPSLOOP_TOKEN= means a stack without
# tokens (opsloop dev).
need_token() {
  if [[ -n "${OPSLOOP_TOKEN_FILE:+set}" ]]; then
    [[ -r "$OPSLOOP_TOKEN_FILE" ]] ||
      missing "token file $OPSLOOP_TOKEN_FILE" "point OPSLOOP_TOKEN_FILE at the admin token (compose: deploy/compose/secrets/admin_token)"
    return 0
  fi
  [[ -n "${OPSLOOP_TOKEN+set}" ]] ||
    missing "admin token" "set OPSLOOP_TOKEN_FILE=deploy/compose/secrets/admin_token (or OPSLOOP_TOKEN; OPSLOOP_TOKEN= for a stack without tokens)"
}

# JSON field by a dotted path (python3); empty when absent, booleans as
# true/false, objects as JSON.
json_get() { # file path
  python3 -c 'import json,sys
v=json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."):
    v=v.get(k) if isinstance(v,dict) else None
print("" if v is None else json.dumps(v) if isinstance(v,(bool,dict,list)) else v)' "$1" "$2"
}

# Writes the admin token as an `authorization` header into a private file
# for `curl -H @file` (routes such as /metrics may need it): the value never
# reaches a command line, and the group's trace goes to /dev/null.
auth_header() { # file
  (umask 077 && : >"$1")
  if [[ -n "${OPSLOOP_TOKEN_FILE:+set}" ]]; then
    { printf 'authorization: Bearer %s\n' "$(head -n1 "$OPSLOOP_TOKEN_FILE")" >"$1"; } 2>/dev/null
  elif [[ -n "${OPSLOOP_TOKEN:+set}" ]]; then
    { printf 'authorization: Bearer %s\n' "$OPSLOOP_TOKEN" >"$1"; } 2>/dev/null
  fi
}
