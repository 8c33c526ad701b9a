#!/usr/bin/env bash
# The daily checklist of docs/runbook.md in one command: every daemon ready,
# ops health (failures, backlog, leases, emergency stop, cost), yesterday's
# summary, firing alerts, and the newest backup's age and verification.
# Exits non-zero when a check needs attention; prints one line per check.
#
# Environment: the base URLs and endpoints of scripts/smoke.sh,
#   OPSLOOP_TOKEN / OPSLOOP_TOKEN_FILE, OPSLOOP_BIN,
#   MAX_BACKUP_AGE_HOURS=26.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
CLI="${OPSLOOP_BIN:-$(command -v opsloop || echo target/release/opsloop)}"
MAX_BACKUP_AGE_HOURS="${MAX_BACKUP_AGE_HOURS:-26}"
attention=0
line() { printf '%-6s %s\n' "$1" "$2"; }

for pair in "api ${API_HTTP:-http://127.0.0.1:9754}" "heartbeat-worker ${HEARTBEAT_HTTP:-http://127.0.0.1:9755}" \
  "alerter ${ALERTER_HTTP:-http://127.0.0.1:9756}" "backup-agent ${BACKUP_HTTP:-http://127.0.0.1:9757}"; do
  name=${pair%% *} base=${pair#* }
  if curl -fs -m 5 -o /dev/null "$base/readyz"; then line ok "$name ready"; else
    line CHECK "$name not ready ($base/readyz)"; attention=1
  fi
done

if health=$("$CLI" -o json health 2>&1); then
  verdict=$(python3 -c '
import json, sys
h = json.loads(sys.argv[1])
flat = json.dumps(h)
notes = []
stop = h.get("emergency_stop") or h.get("emergencyStop") or {}
if isinstance(stop, dict) and stop.get("engaged"):
    notes.append("emergency stop ENGAGED")
if isinstance(stop, bool) and stop:
    notes.append("emergency stop ENGAGED")
if h.get("failure_spike"):
    notes.append("step failure spike (%s in the last hour)" % h.get("step_failures_last_hour"))
if h.get("expired_leases"):
    notes.append("%s steps with expired leases" % h.get("expired_leases"))
import datetime
beat = h.get("last_heartbeat_at")
if not beat:
    notes.append("no heartbeat tick recorded")
else:
    age = datetime.datetime.now(datetime.timezone.utc) - datetime.datetime.fromisoformat(beat.replace("Z", "+00:00"))
    if age.total_seconds() > 900:
        notes.append("last heartbeat tick %d min ago" % (age.total_seconds() // 60))
print("; ".join(notes))' "$health" 2>/dev/null)
  if [[ -n "$verdict" ]]; then line CHECK "ops health: $verdict"; attention=1; else line ok "ops health"; fi
  "$CLI" health | sed 's/^/       /'
else
  line CHECK "ops health unavailable: $health"; attention=1
fi

"$CLI" summary 2>/dev/null | sed 's/^/       /' || { line CHECK "summary unavailable"; attention=1; }

if alerts=$("$CLI" -o json alerts list 2>/dev/null); then
  firing=$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); a=d.get("alerts", d if isinstance(d,list) else []); print(len(a))' "$alerts" 2>/dev/null || echo "?")
  if [[ "$firing" == 0 ]]; then line ok "no alerts"; else line CHECK "$firing alert(s): opsloop alerts list"; attention=1; fi
else
  line CHECK "alerter unavailable"; attention=1
fi

if backups=$("$CLI" -o json backup list --limit 20 2>/dev/null); then
  verdict=$(python3 -c '
import json, sys, datetime
d = json.loads(sys.argv[1]); limit = float(sys.argv[2])
good = [b for b in d.get("backups", []) if str(b.get("status", "")).lower() in ("completed", "verified")]
if not good:
    print("no completed backup"); sys.exit()
b = good[0]
ts = b.get("finished_at") or b.get("started_at")
age = (datetime.datetime.now(datetime.timezone.utc) - datetime.datetime.fromisoformat(ts.replace("Z", "+00:00"))).total_seconds() / 3600
bid = b.get("id")
msg = f"newest backup {bid} is {age:.1f} h old"
print(("STALE " if age > limit else "") + msg)' "$backups" "$MAX_BACKUP_AGE_HOURS" 2>&1)
  case "$verdict" in
    STALE* | no* | Traceback*) line CHECK "$verdict"; attention=1 ;;
    *) line ok "$verdict" ;;
  esac
else
  line CHECK "backup-agent unavailable"; attention=1
fi

if ((attention)); then echo "daily_health_check: needs attention (docs/runbook.md#daily-checklist)"; exit 1; fi
echo "daily_health_check: all good"
