#!/usr/bin/env bash
# Writes deploy/prometheus/rules/*.yml to OUT_DIR with every alert's
# runbook_url on another base URL (the page that holds the runbook sections,
# e.g. your wiki's copy of docs/monitoring.md); the anchor after `#` stays.
#
#   deploy/prometheus/render_rules.sh OUT_DIR [BASE_URL]
#
# BASE_URL defaults to $OPSLOOP_RUNBOOK_BASE_URL, else to the committed
# default in deploy/prometheus/runbook_base_url (the one the rule files and
# their unit tests carry). Point Prometheus's rule_files at OUT_DIR.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:?usage: render_rules.sh OUT_DIR [BASE_URL]}"
base="${2:-${OPSLOOP_RUNBOOK_BASE_URL:-$(head -n1 "$here/runbook_base_url")}}"
case "$base" in
  http://* | https://*) ;;
  *) echo "render_rules.sh: BASE_URL must be an absolute http(s) URL, got '$base'" >&2; exit 2 ;;
esac
case "$base" in
  *'"'* | *'#'* | *' '*) echo "render_rules.sh: BASE_URL must not contain '\"', '#' or spaces" >&2; exit 2 ;;
esac
# Escape what sed's replacement treats specially.
escaped=$(printf '%s' "$base" | sed -e 's/[\\&|]/\\&/g')
mkdir -p "$out"
n=0
for rules in "$here"/rules/*.yml; do
  sed -e "s|^\([[:space:]]*runbook_url:[[:space:]]*\"\)[^\"#]*#|\1${escaped}#|" "$rules" >"$out/$(basename "$rules")"
  n=$((n + 1))
done
echo "render_rules.sh: wrote $n rule file(s) to $out with runbooks at $base"
