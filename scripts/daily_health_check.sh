#!/usr/bin/env bash
# The daily checklists of docs/runbook.md from live data, one line per
# check (`ok` or `CHECK`), exit 1 when any check needs attention:
#   --morning (09:00)  every daemon ready; ops health (emergency stop,
#                      failure spike, expired leases, heartbeat); overnight
#                      runs (the last 24 h: missions, steps, proposals);
#                      errors (failed steps and missions, firing alerts);
#                      API usage per resource; cost against the budget;
#                      the newest backup's age and verification
#   --evening (18:00)  every daemon ready; ops health; daytime runs;
#                      performance (gRPC, heartbeat tick, alert delivery
#                      latency, outbox lag); data growth (dump size and row
#                      counts between backups); tomorrow's schedule
#                      (backups, summary, weekly report, trigger rules)
# Without either, the time of day picks (before 14:00: morning).
# API usage and cost per resource need the governance issue (resources,
# usage, pricing), which has not landed: the line says so instead of
# showing a number.
#
# Usage: scripts/daily_health_check.sh [--morning|--evening] [--post [RECEIVER]]
#   --post [RECEIVER]  also send the checklist to a receiver as an info
#                      alert (`opsloop alerts test`; default: summary)
# Data: `opsloop -o json health|summary|alerts list|backup list|policy get
#   cost_budget|trigger list`, each daemon's /readyz and /metrics.
# Environment: the base URLs and endpoints of scripts/smoke.sh,
#   OPSLOOP_TOKEN_FILE / OPSLOOP_TOKEN, OPSLOOP_BIN, OPSLOOP_CONFIG (for the
#   schedules; default /etc/opsloop/opsloop.toml), MAX_BACKUP_AGE_HOURS=26,
#   MAX_OUTBOX_LAG_SECONDS=60.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
SCRIPT_NAME=daily_health_check
# shellcheck source=scripts/lib/ops_common.sh
source scripts/lib/ops_common.sh

mode="" post=""
while (($#)); do
  case "$1" in
    --morning) mode=morning; shift ;;
    --evening) mode=evening; shift ;;
    --post)
      post=summary
      if [[ -n "${2:-}" && "$2" != --* ]]; then post=$2; shift; fi
      shift ;;
    -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "daily_health_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [[ -z "$mode" ]]; then
  if (($(date +%-H) < 14)); then mode=morning; else mode=evening; fi
fi

need_tool curl "apt-get install curl"
need_tool python3 "apt-get install python3"
find_cli
need_token

data="$(mktemp -d)"
trap 'rm -rf "$data"' EXIT
auth_header "$data/auth.header"
CURL_AUTH=(-H "@$data/auth.header")
DAEMONS=("api ${API_HTTP:-http://127.0.0.1:9754}" "heartbeat-worker ${HEARTBEAT_HTTP:-http://127.0.0.1:9755}"
  "alerter ${ALERTER_HTTP:-http://127.0.0.1:9756}" "backup-agent ${BACKUP_HTTP:-http://127.0.0.1:9757}")

# Collect: a missing file or an .err file tells the judge what failed.
for pair in "${DAEMONS[@]}"; do
  name=${pair%% *} base=${pair#* }
  curl -s -m 5 "${CURL_AUTH[@]}" -o "$data/readyz.$name.json" -w '%{http_code}' "$base/readyz" >"$data/readyz.$name.code" 2>/dev/null ||
    echo 000 >"$data/readyz.$name.code"
  curl -s -m 5 "${CURL_AUTH[@]}" -o "$data/metrics.$name.txt" "$base/metrics" 2>/dev/null || rm -f "$data/metrics.$name.txt"
done
fetch() { # file command...
  local file=$1
  shift
  "$CLI" -o json "$@" >"$data/$file.json" 2>"$data/$file.err" || rm -f "$data/$file.json"
}
fetch health health
fetch summary summary --period daily
fetch alerts alerts list
fetch backups backup list --limit 50
fetch budget policy get cost_budget
[[ "$mode" == evening ]] && fetch triggers trigger list
config="${OPSLOOP_CONFIG:-/etc/opsloop/opsloop.toml}"

python3 - "$mode" "$data" "$config" "${MAX_BACKUP_AGE_HOURS:-26}" "${MAX_OUTBOX_LAG_SECONDS:-60}" \
  >"$data/checklist.txt" <<'PY'
import datetime, json, os, re, sys
mode, data, config, max_backup_h, max_lag = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5])
now = datetime.datetime.now(datetime.timezone.utc)
attention = []

def line(ok, text):
    print(f"{'ok' if ok else 'CHECK':<6} {text}")
    if not ok:
        attention.append(text)

def info(text):
    print(f"{'':<6} {text}")

def load(name):
    try:
        with open(os.path.join(data, name + ".json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

def error(name):
    try:
        return open(os.path.join(data, name + ".err")).read().strip().splitlines()[-1][:200]
    except (OSError, IndexError):
        return "no answer"

def when(ts):
    return datetime.datetime.fromisoformat(ts.replace("Z", "+00:00")) if ts else None

def metrics(daemon):
    out = {}
    try:
        text = open(os.path.join(data, f"metrics.{daemon}.txt")).read()
    except OSError:
        return out
    for m in re.finditer(r"^([a-z_]+)(\{[^}]*\})? ([0-9.eE+-]+)$", text, re.M):
        out.setdefault(m.group(1), []).append(float(m.group(3)))
    return out

print(f"daily_health_check: {mode} checklist, {now:%Y-%m-%d %H:%M} UTC")

daemons = ["api", "heartbeat-worker", "alerter", "backup-agent"]
for d in daemons:
    code = open(os.path.join(data, f"readyz.{d}.code")).read().strip()
    if code == "200":
        line(True, f"{d} ready")
    else:
        body = ""
        try:
            checks = json.load(open(os.path.join(data, f"readyz.{d}.json"))).get("checks", {})
            body = "; ".join(f"{k}: {v.get('error')}" for k, v in checks.items() if v.get("status") != "ok")
        except (OSError, ValueError):
            pass
        line(False, f"{d} not ready (/readyz {code}{': ' + body if body else ''})")

health = load("health")
if health is None:
    line(False, f"ops health unavailable: {error('health')}")
else:
    notes = []
    stop = health["emergency_stop"]
    if stop["engaged"]:
        notes.append(f"emergency stop ENGAGED by {stop['actor']}: {stop['reason']}")
    if health["failure_spike"]:
        notes.append(f"step failure spike ({health['step_failures_last_hour']} in the last hour, threshold {health['failure_threshold']})")
    if health["expired_leases"]:
        notes.append(f"{health['expired_leases']} steps with expired leases")
    beat = when(health["last_heartbeat_at"])
    if beat is None:
        notes.append("no heartbeat tick recorded")
    elif (now - beat).total_seconds() > 900:
        notes.append(f"last heartbeat tick {int((now - beat).total_seconds() // 60)} min ago")
    line(not notes, "ops health: " + ("; ".join(notes) if notes else
         f"stop released, {health['step_failures_last_hour']} step failures in the last hour, "
         f"{health['pending_proposals']} pending proposals, {health['queued_steps']} queued / {health['running_steps']} running steps"))

summary = load("summary")
label = "overnight runs" if mode == "morning" else "daytime runs"
if summary is None:
    line(False, f"{label}: summary unavailable: {error('summary')}")
else:
    m, s, p = summary["missions"], summary["steps"], summary["proposals"]
    line(True, f"{label} (last 24 h): missions {m['succeeded']} succeeded, {m['failed']} failed, {m['running']} running; "
         f"steps {s['succeeded']} succeeded, {s['failed']} failed; proposals {p['approved']} approved, "
         f"{p['rejected']} rejected, {p['pending']} pending; {summary['totalEvents']} events")

if mode == "morning":
    alerts = load("alerts")
    if summary is not None:
        failed = summary["missions"]["failed"] + summary["steps"]["failed"]
        line(failed == 0, f"errors: {summary['missions']['failed']} failed missions, {summary['steps']['failed']} failed steps in the last 24 h"
             + (" (opsloop mission list --status failed)" if failed else ""))
    if alerts is None:
        line(False, f"alerts unavailable: {error('alerts')}")
    else:
        firing = [a for a in alerts["alerts"] if a["status"] == "firing" and a["severity"] != "info"]
        names = sorted({a["labels"].get("alertname", "?") for a in firing})
        line(not firing, f"{len(firing)} firing alert(s) above info" + (f": {', '.join(names)} (opsloop alerts list)" if firing else ""))
    info("API usage per resource: not available: resource usage and pricing come with the governance issue, which has not landed")
    budget = load("budget")
    if health is not None:
        today, month = health["cost_today_usd"], health["cost_month_usd"]
        if budget is not None:
            b = budget["value"]
            warn_day = today >= b["daily_usd"] * b["daily_warn_ratio"]
            warn_month = month >= b["monthly_usd"] * b["monthly_warn_ratio"]
            line(not (warn_day or warn_month), f"cost: ${today:.2f} today of ${b['daily_usd']:.2f}, ${month:.2f} this month of ${b['monthly_usd']:.2f}"
                 " (per resource: not available until the governance issue lands)")
        else:
            line(False, f"cost: ${today:.2f} today, ${month:.2f} this month; budget unavailable: {error('budget')}")

backups = load("backups")
if backups is None:
    line(False, f"backups unavailable: {error('backups')}")
elif mode == "morning":
    done = [b for b in backups["backups"] if b["status"] == "completed"]
    if not done:
        line(False, "no completed backup (scripts/backup_now.sh)")
    else:
        b = max(done, key=lambda b: b["finished_at"] or "")
        age = (now - when(b["finished_at"])).total_seconds() / 3600
        verified = b["verification"] == "passed"
        line(age <= max_backup_h and verified,
             f"newest backup {b['id']} is {age:.1f} h old (limit {max_backup_h:g} h), verification {b['verification']}")
else:
    done = sorted((b for b in backups["backups"] if b["status"] == "completed"), key=lambda b: b["finished_at"])
    if not done:
        line(False, "data growth: no completed backup to measure")
    else:
        new = done[-1]
        base = next((b for b in done if (when(new["finished_at"]) - when(b["finished_at"])).total_seconds() <= 86400), new)
        rows = lambda b, t: (b.get("manifest") or {}).get("row_counts", {}).get(t, 0)
        growth = ", ".join(f"{t.split('.')[-1]} {rows(new, t)} rows ({rows(new, t) - rows(base, t):+d})"
                           for t in ("public.events", "public.proposals", "public.missions"))
        line(True, f"data growth since {base['finished_at'][:16]}: dump {new['size_bytes']} bytes "
             f"({new['size_bytes'] - base['size_bytes']:+d}); {growth}")

if mode == "evening":
    def mean(ms, name):
        s, c = sum(ms.get(name + "_sum", [])), sum(ms.get(name + "_count", []))
        return (s / c * 1000, int(c)) if c else (None, 0)
    api, hb, al = metrics("api"), metrics("heartbeat-worker"), metrics("alerter")
    parts = []
    for what, ms, name in (("gRPC", api, "opsloop_grpc_request_duration_seconds"),
                           ("heartbeat tick", hb, "opsloop_heartbeat_tick_seconds"),
                           ("alert delivery", al, "opsloop_alerter_delivery_seconds")):
        avg, n = mean(ms, name)
        parts.append(f"{what} {avg:.1f} ms mean over {n}" if n else f"{what}: no samples")
    lag = (api.get("opsloop_outbox_lag_seconds") or [None])[0]
    if lag is None:
        line(False, "performance: the api's /metrics is unavailable")
    else:
        line(lag <= max_lag, f"performance (since start): {'; '.join(parts)}; outbox lag {lag:g} s (limit {max_lag:g} s)")
    cfg = {}
    try:
        import tomllib
        with open(config, "rb") as f:
            cfg = tomllib.load(f)
    except (OSError, ValueError, ImportError):
        pass
    hbc, bc = cfg.get("heartbeat", {}), cfg.get("backup", {})
    tz = bc.get("timezone", "UTC")
    triggers = load("triggers")
    if triggers is not None:
        enabled = sum(1 for t in triggers["triggers"] if t.get("enabled"))
        rules = f"{enabled} trigger rule(s) enabled, {len(triggers['triggers']) - enabled} disabled"
    else:
        rules = f"trigger rules unavailable: {error('triggers')}"
    line(triggers is not None,
         f"tomorrow: backup at cron '{bc.get('schedule', '0 2 * * *')}' ({tz}), daily summary at "
         f"'{hbc.get('summary_cron', '0 6 * * *')}', weekly report at '{hbc.get('weekly_report_cron', '0 9 * * 1')}' "
         f"({hbc.get('summary_timezone', 'UTC')}); {rules}")

if attention:
    print(f"daily_health_check: {mode}: needs attention ({len(attention)}): docs/runbook.md#daily-checklist")
else:
    print(f"daily_health_check: {mode}: all good")
PY
status=$?
cat "$data/checklist.txt"
if ((status != 0)); then
  echo "daily_health_check: the checklist could not be built (exit $status)" >&2
  exit 1
fi
if [[ -n "$post" ]]; then
  if "$CLI" -o json alerts test "$post" --severity info --message "$(cat "$data/checklist.txt")" \
    >"$data/post.json" 2>"$data/post.err"; then
    echo "daily_health_check: posted to receiver $post"
  else
    echo "daily_health_check: posting to receiver $post failed: $(head -c 300 "$data/post.err")"
    exit 1
  fi
fi
tail -n1 "$data/checklist.txt" | grep -q 'all good$' || exit 1
