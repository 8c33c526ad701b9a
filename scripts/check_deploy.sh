#!/usr/bin/env bash
# Static checks of the deployment files, each by the tool that knows the
# format (no Docker engine, no build):
#   compose     docker-compose 1.29 `config -q`, with and without the
#               `monitoring` profile, and with the e2e override; services,
#               ports, health probes and mounted paths agree; the exporters
#               read the host read-only and PostgreSQL's password from a
#               secret; opsloop.toml keys exist in the code
#   docker      Dockerfiles: stages, COPY sources, every workspace member and
#               binary covered by the dependency layer; one FROM-scratch
#               target per daemon (non-root, OCI labels, a shell-free
#               HEALTHCHECK by its own binary) and the cli target, the same
#               in both files from the `rootfs` stage on
#   systemd     `systemd-analyze verify` of every unit under a scratch root
#               whose /usr/local/bin holds only the binaries Cargo builds;
#               `systemd-analyze security --offline=yes` (report kept in
#               docs/systemd-security.txt, fails above SECURITY_THRESHOLD)
#   prometheus  `promtool check config`, `check rules` (and the e2e forced
#               alert's rule file), `test rules`; every daemon and exporter
#               of the monitoring profile is a scrape target
#   grafana     JSON, provisioning, and every panel query names a metric the
#               daemons export (or a recording rule); every dashboard has the
#               datasource/job/instance variables, the link to the others and
#               the restart and emergency-stop annotations; the home dashboard
#               (the overview) has the error-budget panel and every loop-state
#               gauge of crates/core/src/loop_metrics.rs
#   docs        every alert has its section in docs/monitoring.md (the
#               runbook_url anchor); every exported metric is described
#               there and has HELP text (STRICT_METRICS=0: notes only)
#   scripts     `bash -n` and shellcheck of the operations scripts
# Arguments select checks by name (`scripts/check_deploy.sh grafana docs`);
# without arguments every check runs.
# Installs what it needs from Debian once (quietly). Exits non-zero naming
# the failed check. By default (STRICT_METRICS=1) it also fails when an alert
# rule needs a metric no daemon exports, when an exported metric is not
# described in docs/monitoring.md, or when a metric the code records has no
# HELP text in crates/core/src/telemetry.rs (METRIC_HELP); STRICT_METRICS=0
# lists those as notes instead.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT="$PWD"
SECURITY_THRESHOLD="${SECURITY_THRESHOLD:-2.5}"
started=$(date +%s)
failed=()
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

say() { printf '%s\n' "$*"; }
pass() { say "ok   $1"; }
fail() { say "FAIL $1"; failed+=("$1"); }

# ---------------------------------------------------------------- tools --
ensure_tools() {
  local missing=()
  command -v docker-compose >/dev/null || missing+=(docker-compose)
  command -v promtool >/dev/null || missing+=(prometheus)
  command -v systemd-analyze >/dev/null || missing+=(systemd)
  command -v shellcheck >/dev/null || missing+=(shellcheck)
  [[ -x /usr/bin/python3 ]] && /usr/bin/python3 -c 'import yaml' 2>/dev/null || missing+=(python3 python3-yaml)
  if ((${#missing[@]})); then
    if ! { apt-get update -qq >/dev/null 2>&1 &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; }; then
      say "check_deploy: cannot install ${missing[*]} (apt-get failed)" >&2
      exit 2
    fi
  fi
}
ensure_tools
PY=/usr/bin/python3

# -------------------------------------------------------------- compose --
check_compose() {
  local file=deploy/compose/docker-compose.yml out
  # A scratch secrets dir so the check never depends on local secrets.
  mkdir -p "$work/secrets"
  for s in database_url amqp_url admin_token agent_token slack_webhook_url \
    discord_webhook_url postgres_password rabbitmq_password grafana_admin_password; do
    echo "x" >"$work/secrets/$s"
  done
  export OPSLOOP_SECRETS_DIR="$work/secrets"
  if out=$(docker-compose -f "$file" config -q 2>&1); then pass "compose: config -q"; else
    say "$out"; fail "compose: docker-compose config -q"
  fi
  if out=$(COMPOSE_PROFILES=monitoring docker-compose -f "$file" config -q 2>&1); then
    pass "compose: config -q (profile monitoring)"
  else
    say "$out"; fail "compose: docker-compose config -q (profile monitoring)"
  fi
  if out=$(COMPOSE_PROFILES=monitoring docker-compose -f "$file" -f deploy/compose/docker-compose.e2e.yml config -q 2>&1); then
    pass "compose: config -q (e2e override, profile monitoring)"
  else
    say "$out"; fail "compose: docker-compose config -q (e2e override)"
  fi
  docker-compose -f "$file" config >"$work/compose.yml" 2>/dev/null
  COMPOSE_PROFILES=monitoring docker-compose -f "$file" config >"$work/compose-monitoring.yml" 2>/dev/null
  if out=$("$PY" - "$work/compose.yml" "$work/compose-monitoring.yml" "$ROOT" <<'PY' 2>&1
import os, re, sys, tomllib, glob, yaml
base = yaml.safe_load(open(sys.argv[1]))
mon = yaml.safe_load(open(sys.argv[2]))
root = sys.argv[3]
errors = []
want = {"postgres", "rabbitmq", "migrate", "api", "heartbeat-worker", "alerter", "backup-agent"}
monitoring = {"prometheus", "grafana", "node-exporter", "postgres-exporter"}
# docker-compose 1.29's `config` lists every service whatever the profile:
# the profile membership is checked on the service itself.
if set(mon["services"]) != want | monitoring:
    errors.append(f"services {sorted(mon['services'])} != {sorted(want | monitoring)}")
for name, svc in mon["services"].items():
    profiles = svc.get("profiles", [])
    if name in want and profiles:
        errors.append(f"{name}: must run without a profile, has {profiles}")
    if name not in want and profiles != ["monitoring"]:
        errors.append(f"{name}: must be in profile monitoring only, has {profiles}")
daemons = {"api": ("API", 9754), "heartbeat-worker": ("HEARTBEAT", 9755),
           "alerter": ("ALERTER", 9756), "backup-agent": ("BACKUP", 9757)}
for name, (section, port) in daemons.items():
    svc = base["services"][name]
    env = svc.get("environment", {})
    if env.get(f"OPSLOOP__{section}__HTTP_ADDR") != f"0.0.0.0:{port}":
        errors.append(f"{name}: OPSLOOP__{section}__HTTP_ADDR must be 0.0.0.0:{port}")
    if str(port) not in " ".join(map(str, svc["healthcheck"]["test"])):
        errors.append(f"{name}: healthcheck does not probe port {port}")
    published = [str(p.get("target")) if isinstance(p, dict) else str(p).split("/")[0] for p in svc.get("ports", [])]
    if not any(p.endswith(f":{port}") or p == str(port) for p in published):
        errors.append(f"{name}: HTTP port {port} not published")
    deps = svc.get("depends_on", {})
    for dep, cond in (("postgres", "service_healthy"), ("rabbitmq", "service_healthy"),
                      ("migrate", "service_completed_successfully")):
        if deps.get(dep, {}).get("condition") != cond:
            errors.append(f"{name}: depends_on {dep} must be condition {cond}")
    for key in ("restart", "mem_limit", "cpus"):
        if key not in svc:
            errors.append(f"{name}: no {key}")
    for s in svc.get("secrets", []):
        target = s["source"] if isinstance(s, dict) else s
        if target not in base.get("secrets", {}):
            errors.append(f"{name}: unknown secret {target}")
# docker-compose 1.29 accepts any restart string; the engine does not.
for name, svc in mon["services"].items():
    r = str(svc.get("restart", "no"))
    if not re.fullmatch(r"no|always|unless-stopped|on-failure(:\d+)?", r):
        errors.append(f"{name}: restart policy {r!r} is not one the engine knows")
# The exporters: node-exporter sees the host only through read-only mounts;
# postgres-exporter's password is a secret file, never in the environment.
# Third-party images are variables with the official image as default.
ne = mon["services"]["node-exporter"]
for v in ne.get("volumes", []):
    spec = v if isinstance(v, str) else f'{v.get("source")}:{v.get("target")}:{"ro" if v.get("read_only") else "rw"}'
    if not spec.split(":")[-1].split(",")[0] == "ro":
        errors.append(f"node-exporter: volume {spec} is not read-only")
for flag in ("--path.procfs=/host/proc", "--path.sysfs=/host/sys", "--path.rootfs=/host/root"):
    if flag not in ne.get("command", []):
        errors.append(f"node-exporter: no {flag}")
pe = mon["services"]["postgres-exporter"]
pe_env = pe.get("environment", {})
if pe_env.get("DATA_SOURCE_PASS_FILE") != "/run/secrets/postgres_password":
    errors.append("postgres-exporter: DATA_SOURCE_PASS_FILE must be /run/secrets/postgres_password")
for key in ("DATA_SOURCE_NAME", "DATA_SOURCE_PASS"):
    if key in pe_env:
        errors.append(f"postgres-exporter: {key} would put the password in the environment")
for name in ("node-exporter", "postgres-exporter"):
    if mon["services"][name].get("ports"):
        errors.append(f"{name}: publishes ports (Prometheus reaches it on the compose network)")
    for key in ("restart", "mem_limit", "cpus", "healthcheck"):
        if key not in mon["services"][name]:
            errors.append(f"{name}: no {key}")
compose_src = open(os.path.join(root, "deploy/compose/docker-compose.yml")).read()
for var, default in (("NODE_EXPORTER_IMAGE", "prom/node-exporter:"),
                     ("POSTGRES_EXPORTER_IMAGE", "prometheuscommunity/postgres-exporter:")):
    if not re.search(rf"image: \$\{{{var}:-{re.escape(default)}[^}}]+\}}", compose_src):
        errors.append(f"docker-compose.yml: image must be ${{{var}:-{default}…}}")
if base["services"]["migrate"].get("command") != ["opsloop", "migrate", "up"]:
    errors.append("migrate must run `opsloop migrate up`")
for name in ("postgres", "rabbitmq"):
    if "healthcheck" not in base["services"][name]:
        errors.append(f"{name}: no healthcheck")
# Bind-mounted files exist in the repository.
for doc in (base, mon):
    for name, svc in doc["services"].items():
        for v in svc.get("volumes", []):
            src = v.get("source") if isinstance(v, dict) else v.split(":")[0]
            kind = v.get("type") if isinstance(v, dict) else ("bind" if src.startswith(("/", ".")) else "volume")
            if kind == "bind" and not os.path.exists(src):
                errors.append(f"{name}: bind mount source {src} does not exist")
        b = svc.get("build")
        if b:
            df = os.path.join(b["context"], b.get("dockerfile", "Dockerfile"))
            if not os.path.isfile(df):
                errors.append(f"{name}: Dockerfile {df} does not exist")
# opsloop.toml: TOML, and every key is a field of the settings struct that
# reads it (the daemons reject unknown keys at start).
cfg = tomllib.load(open(os.path.join(root, "deploy/compose/opsloop.toml"), "rb"))
src = {}
for path in glob.glob(os.path.join(root, "crates/*/src/**/*.rs"), recursive=True):
    src[path] = open(path, encoding="utf-8").read()
allsrc = "\n".join(src.values())
known_sections = {"database", "bus", "telemetry", "shutdown", "audit", "api", "heartbeat", "alerter", "backup"}
def walk(prefix, table):
    for key, value in table.items():
        if not prefix and key not in known_sections and not isinstance(value, dict):
            if not re.search(rf"pub {re.escape(key)}:", allsrc):
                errors.append(f"opsloop.toml: unknown key {key}")
            continue
        if not prefix and key not in known_sections:
            errors.append(f"opsloop.toml: unknown section [{key}]")
            continue
        if prefix and not re.search(rf"pub {re.escape(key)}:", allsrc):
            errors.append(f"opsloop.toml: [{prefix}] key {key} is not a settings field in crates/")
        if isinstance(value, dict):
            walk(f"{prefix}.{key}" if prefix else key, value)
walk("", cfg)
print("\n".join(errors))
sys.exit(1 if errors else 0)
PY
  ); then pass "compose: services, ports, probes, mounts, opsloop.toml keys"; else
    say "$out"; fail "compose: structure"
  fi
  # The runtime-only Dockerfile is selectable with the same compose file.
  local df
  df=$(OPSLOOP_DOCKERFILE=deploy/docker/Dockerfile.runtime docker-compose -f "$file" config 2>/dev/null |
    sed -n 's/^ *dockerfile: //p' | sort -u)
  if [[ "$df" == deploy/docker/Dockerfile.runtime && -f "$df" ]]; then
    pass "compose: OPSLOOP_DOCKERFILE selects deploy/docker/Dockerfile.runtime"
  else
    say "dockerfile(s) with OPSLOOP_DOCKERFILE set: ${df:-none}"; fail "compose: runtime Dockerfile selection"
  fi
  unset OPSLOOP_SECRETS_DIR
}

# --------------------------------------------------------------- docker --
check_docker() {
  local out
  if out=$("$PY" - "$ROOT" <<'PY' 2>&1
import glob, os, re, sys, tomllib
root = sys.argv[1]
errors = []
ws = tomllib.load(open(os.path.join(root, "Cargo.toml"), "rb"))
members = ws["workspace"]["members"]
bins = set()
for m in members:
    man = tomllib.load(open(os.path.join(root, m, "Cargo.toml"), "rb"))
    for b in man.get("bin", []):
        bins.add(b["name"])
want_bins = {"opsloop", "opsloop-api", "opsloop-heartbeat-worker", "opsloop-alerter", "opsloop-backup-agent"}
if not want_bins <= bins:
    errors.append(f"workspace binaries {sorted(bins)} lack {sorted(want_bins - bins)}")

def instructions(path):
    text = open(path).read()
    text = re.sub(r"\\\n", " ", text)
    out = []
    for n, line in enumerate(text.split("\n"), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        word, _, rest = s.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out

KNOWN = {"FROM", "RUN", "COPY", "ADD", "ARG", "ENV", "LABEL", "WORKDIR", "USER", "EXPOSE",
         "HEALTHCHECK", "ENTRYPOINT", "CMD", "VOLUME", "STOPSIGNAL", "SHELL", "ONBUILD"}
for df in ("deploy/docker/Dockerfile", "deploy/docker/Dockerfile.runtime"):
    path = os.path.join(root, df)
    ins = instructions(path)
    stages, args, copied_manifests = [], set(), set()
    has = {k: False for k in ("USER", "HEALTHCHECK", "LABEL")}
    for word, rest in ins:
        if word not in KNOWN:
            errors.append(f"{df}: unknown instruction {word}")
        if word == "ARG":
            args.add(rest.split("=")[0])
        if word == "FROM":
            parts = rest.split()
            image = parts[0]
            m = re.fullmatch(r"\$\{?(\w+)\}?", image)
            if m and m.group(1) not in args:
                errors.append(f"{df}: FROM uses undeclared ARG {m.group(1)}")
            if not m and ":" not in image and image not in stages and image != "scratch":
                errors.append(f"{df}: FROM {image}: neither a stage nor a tagged image")
            if len(parts) == 3 and parts[1].upper() == "AS":
                stages.append(parts[2])
        if word in has:
            has[word] = True
        if word in ("COPY", "ADD"):
            parts = rest.split()
            flags = [p for p in parts if p.startswith("--")]
            paths = [p for p in parts if not p.startswith("--")]
            srcs = paths[:-1]
            frm = [f.split("=", 1)[1] for f in flags if f.startswith("--from=")]
            if frm:
                if frm[0] not in stages:
                    errors.append(f"{df}: COPY --from={frm[0]} names no earlier stage")
                continue
            for s in srcs:
                if s.startswith("target/release/"):
                    if s.rsplit("/", 1)[1] not in bins:
                        errors.append(f"{df}: {s} is not a binary the workspace builds")
                    continue
                if not glob.glob(os.path.join(root, s)):
                    errors.append(f"{df}: COPY source {s} does not exist in the repository")
                if s.endswith("Cargo.toml"):
                    copied_manifests.add(os.path.dirname(s))
    for k, v in has.items():
        if not v:
            errors.append(f"{df}: no {k}")
    text = open(path).read()
    # Both builders (classic for docker-compose 1.29, BuildKit offline).
    if re.search(r"^#\s*syntax=", text, re.M):
        errors.append(f"{df}: a `# syntax=` line makes BuildKit fetch a frontend image")
    if re.search(r"--mount=|<<\s*['\"]?EOF", text):
        errors.append(f"{df}: BuildKit-only syntax (RUN --mount or heredoc)")
    if df.endswith("Dockerfile"):
        # The dependency layer must know every workspace member, and the
        # release build must name every binary the image ships.
        for m in members:
            if m not in copied_manifests:
                errors.append(f"{df}: workspace member {m} has no manifest COPY in the dependency layer")
        for b in want_bins:
            if "target/release/$bin" not in text or b not in text:
                errors.append(f"{df}: binary {b} not built/copied")
    for b in want_bins:
        if not re.search(rf"\b{re.escape(b)}\b", text):
            errors.append(f"{df}: does not ship {b}")
    # One image per daemon: a FROM-scratch target each, non-root, labelled,
    # probed by its own binary (exec form: the image has no shell).
    flat = re.sub(r"\\\n", " ", text)
    blocks = re.split(r"^FROM ", flat, flags=re.M)
    by_stage = {}
    for b in blocks[1:]:
        head = b.split("\n", 1)[0].split()
        if len(head) == 3:
            by_stage[head[2]] = b
    for d in ("api", "heartbeat-worker", "alerter", "backup-agent"):
        b = by_stage.get(d)
        if b is None or not b.startswith("scratch AS"):
            errors.append(f"{df}: no `FROM scratch AS {d}` target")
            continue
        if not re.search(r"^USER 10001:10001$", b, re.M):
            errors.append(f"{df}: target {d} does not run as uid 10001")
        if not re.search(rf'^HEALTHCHECK .*CMD \["/usr/local/bin/opsloop-{d}", "healthcheck"\]', b, re.M):
            errors.append(f"{df}: target {d}: HEALTHCHECK must be the exec form of opsloop-{d} healthcheck")
        for label in ("version", "revision", "source"):
            if f"org.opencontainers.image.{label}=" not in b:
                errors.append(f"{df}: target {d} has no org.opencontainers.image.{label} label")
        if f'CMD ["opsloop-{d}"]' not in b:
            errors.append(f"{df}: target {d} does not run opsloop-{d}")
    if "cli" not in by_stage:
        errors.append(f"{df}: no `cli` target (compose's migrate job)")
# Both Dockerfiles assemble the images the same way: from the `rootfs`
# stage on they differ only in where the binaries come from.
def from_rootfs(df, binaries_copy):
    text = open(os.path.join(root, df)).read()
    tail = text[text.index("FROM ${RUNTIME_IMAGE} AS rootfs"):]
    return tail.replace(binaries_copy, "COPY <binaries> /opt/opsloop/bin/")
src_tail = from_rootfs("deploy/docker/Dockerfile", "COPY --from=build /out/ /opt/opsloop/bin/")
rt_tail = from_rootfs("deploy/docker/Dockerfile.runtime", "COPY " + " ".join(
    f"target/release/{b}" for b in ("opsloop", "opsloop-api", "opsloop-heartbeat-worker",
                                    "opsloop-alerter", "opsloop-backup-agent")) + " /opt/opsloop/bin/")
if src_tail != rt_tail:
    errors.append("deploy/docker/Dockerfile and Dockerfile.runtime differ from the rootfs stage on (beyond the binaries' COPY)")
print("\n".join(errors))
sys.exit(1 if errors else 0)
PY
  ); then pass "docker: Dockerfile and Dockerfile.runtime stages, COPY sources, members, binaries"; else
    say "$out"; fail "docker: Dockerfiles"
  fi
  # Replay the dependency layer's dummy-source step on the manifests alone and
  # let cargo load the workspace from it (--locked: Cargo.lock fits).
  if command -v cargo >/dev/null; then
    local dummy="$work/dummy" manifest
    mkdir -p "$dummy"
    cp Cargo.toml Cargo.lock "$dummy/"
    while read -r manifest; do
      mkdir -p "$dummy/$(dirname "$manifest")"
      cp "$manifest" "$dummy/$manifest"
    done < <(sed -n 's#^COPY \([^ ]*/Cargo.toml\) .*#\1#p' deploy/docker/Dockerfile)
    "$PY" - >"$work/dummy.sh" <<'PY'
s = open("deploy/docker/Dockerfile").read().replace("\\\n", " ")
run = [l for l in s.split("\n") if l.startswith("RUN ") and "Cargo.toml" in l and "cargo build" in l][0]
print(run[4:run.index("cargo build")])
PY
    if out=$(cd "$dummy" && bash -e "$work/dummy.sh" 2>&1 &&
      { cargo metadata --locked --offline --format-version 1 --filter-platform x86_64-unknown-linux-gnu >/dev/null 2>&1 ||
        cargo metadata --locked --no-deps --format-version 1 2>&1 >/dev/null; }); then
      pass "docker: dependency layer's dummy tree loads the workspace (cargo metadata --locked)"
    else
      say "$out"; fail "docker: dependency layer (dummy sources)"
    fi
  fi
  if out=$([[ -x deploy/docker/rootfs.sh ]] && bash -n deploy/docker/rootfs.sh 2>&1 &&
    shellcheck deploy/docker/rootfs.sh 2>&1); then
    pass "docker: rootfs.sh (executable, bash -n, shellcheck)"
  else
    say "$out"; fail "docker: rootfs.sh"
  fi
}

# -------------------------------------------------------------- systemd --
check_systemd() {
  local sroot="$work/sysroot" unit out ok=1 report="$work/security.txt"
  mkdir -p "$sroot/etc/systemd/system" "$sroot/usr/local/bin" "$sroot/usr/lib/systemd" "$sroot/etc/opsloop"
  # The distribution's units (targets, sockets) the opsloop units refer to.
  cp -a /usr/lib/systemd/system "$sroot/usr/lib/systemd/"
  # Only the binaries Cargo builds exist: a wrong ExecStart path fails.
  for b in $("$PY" - <<'PY'
import tomllib, os
ws = tomllib.load(open("Cargo.toml", "rb"))
for m in ws["workspace"]["members"]:
    for b in tomllib.load(open(os.path.join(m, "Cargo.toml"), "rb")).get("bin", []):
        print(b["name"])
PY
  ); do
    printf '#!/bin/sh\nexit 0\n' >"$sroot/usr/local/bin/$b"
    chmod +x "$sroot/usr/local/bin/$b"
  done
  cp deploy/systemd/*.service deploy/systemd/*.target "$sroot/etc/systemd/system/"
  for unit in deploy/systemd/*.service deploy/systemd/*.target; do
    unit=$(basename "$unit")
    # verify warns (exit 0) on unknown keys: any output is a failure too.
    if out=$(systemd-analyze verify --root="$sroot" "$sroot/etc/systemd/system/$unit" 2>&1) && [[ -z "$out" ]]; then
      :
    else
      say "$out"; ok=0; fail "systemd: verify $unit"
    fi
  done
  ((ok)) && pass "systemd: systemd-analyze verify (6 units)"
  # Required directives, so a dropped hardening line cannot pass unnoticed.
  ok=1
  for unit in deploy/systemd/opsloop-{api,heartbeat-worker,alerter,backup-agent}.service; do
    for d in Type=notify WatchdogSec=30 Restart=on-failure LoadCredential=database_url:/etc/opsloop/credentials/database_url \
      LoadCredential=amqp_url:/etc/opsloop/credentials/amqp_url DynamicUser=yes \
      StateDirectory=opsloop LogsDirectory=opsloop \
      Environment=OPSLOOP__AUDIT__LOG_PATH=/var/log/opsloop/audit_events.jsonl \
      ProtectSystem=strict NoNewPrivileges=yes PrivateTmp=yes ProtectHome=yes \
      "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6" SystemCallFilter=@system-service \
      CapabilityBoundingSet= LockPersonality=yes MemoryDenyWriteExecute=yes ProtectKernelTunables=yes \
      ProtectKernelModules=yes ProtectKernelLogs=yes ProtectControlGroups=yes RestrictNamespaces=yes \
      RestrictRealtime=yes SystemCallArchitectures=native; do
      grep -qxF "$d" "$unit" || { say "$unit: missing $d"; ok=0; }
    done
  done
  grep -qx 'Type=oneshot' deploy/systemd/opsloop-migrate.service || { say "opsloop-migrate.service: not oneshot"; ok=0; }
  if ((ok)); then pass "systemd: required directives"; else fail "systemd: required directives"; fi
  # Exposure scores (offline: from the unit files alone).
  {
    echo "# systemd-analyze security --offline=yes (systemd $(systemd-analyze --version | head -1 | awk '{print $2}'))"
    echo "# Generated by scripts/check_deploy.sh; lower is better (0 = fully locked down, 10 = unprotected)."
    echo "# The check fails above ${SECURITY_THRESHOLD}."
    echo
  } >"$report"
  ok=1
  local summary=""
  for unit in deploy/systemd/*.service; do
    unit=$(basename "$unit")
    out=$(systemd-analyze security --offline=yes --root="$sroot" --no-pager "$unit" 2>&1)
    local rc=$?
    local score
    score=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' <<<"$out")
    summary+="$(printf '%-34s %s' "$unit" "${score:-?}")"$'\n'
    if ((rc != 0)) || [[ -z "$score" ]] || ! awk -v s="$score" -v t="$SECURITY_THRESHOLD" 'BEGIN{exit !(s<=t)}'; then
      ok=0; say "$unit: exposure ${score:-unknown} (threshold $SECURITY_THRESHOLD)"
    fi
    # shellcheck disable=SC2001 # strip trailing blanks of every line
    { echo "## $unit"; echo; sed 's/[[:space:]]*$//' <<<"$out"; echo; } >>"$work/security-detail.txt"
  done
  { echo "## Overall exposure"; echo; printf '%s' "$summary"; echo; cat "$work/security-detail.txt"; } >>"$report"
  mkdir -p docs && cp "$report" docs/systemd-security.txt
  if ((ok)); then pass "systemd: security exposure <= $SECURITY_THRESHOLD (docs/systemd-security.txt)"; else
    fail "systemd: security exposure"
  fi
  if out=$(bash -n deploy/systemd/install.sh 2>&1 && shellcheck deploy/systemd/install.sh 2>&1); then
    pass "systemd: install.sh (bash -n, shellcheck)"
  else
    say "$out"; fail "systemd: install.sh"
  fi
}

# ----------------------------------------------------------- prometheus --
check_prometheus() {
  local out cfg
  # The token files exist only in the container (/run/secrets): check a copy
  # whose credentials files point at empty stand-ins.
  cfg=$(mktemp -d)
  cp -r deploy/prometheus/rules "$cfg/rules"
  sed "s#/run/secrets/#$cfg/#" deploy/prometheus/prometheus.yml >"$cfg/prometheus.yml"
  touch "$cfg/viewer_token" "$cfg/alert_sender_token"
  if out=$(promtool check config "$cfg/prometheus.yml" 2>&1); then pass "prometheus: promtool check config"; else
    say "$out"; fail "prometheus: promtool check config"
  fi
  rm -rf "$cfg"
  if out=$(promtool check rules deploy/prometheus/rules/*.yml 2>&1); then pass "prometheus: promtool check rules"; else
    say "$out"; fail "prometheus: promtool check rules"
  fi
  # The test-only forced alert of scripts/compose_e2e.sh.
  if out=$(promtool check rules deploy/compose/e2e-forced-alert.rules.yml 2>&1); then
    pass "prometheus: promtool check rules (e2e forced alert)"
  else
    say "$out"; fail "prometheus: e2e-forced-alert.rules.yml"
  fi
  if out=$(cd deploy/prometheus/tests && promtool test rules ./*.yml 2>&1); then pass "prometheus: promtool test rules"; else
    say "$out"; fail "prometheus: promtool test rules"
  fi
  # render_rules.sh puts every runbook_url on another base, and the result
  # still loads.
  local rendered
  rendered=$(mktemp -d)
  if out=$(deploy/prometheus/render_rules.sh "$rendered" "https://runbooks.example.org/opsloop" 2>&1 &&
    promtool check rules "$rendered"/*.yml 2>&1) &&
    ! grep 'runbook_url:' "$rendered"/*.yml | grep -vq '"https://runbooks.example.org/opsloop#'; then
    pass "prometheus: render_rules.sh rewrites every runbook_url"
  else
    say "$out"; fail "prometheus: render_rules.sh"
  fi
  rm -rf "$rendered"
  # Every alert has a unit test in which it fires.
  if out=$("$PY" - <<'PY' 2>&1
import glob, re, yaml
alerts = {r["alert"] for p in glob.glob("deploy/prometheus/rules/*.yml")
          for g in yaml.safe_load(open(p))["groups"] for r in g["rules"] if "alert" in r}
fired = set()
for p in glob.glob("deploy/prometheus/tests/*.yml"):
    for t in yaml.safe_load(open(p))["tests"]:
        for a in t.get("alert_rule_test", []):
            if a.get("exp_alerts"):
                fired.add(a["alertname"])
missing = sorted(alerts - fired)
if missing:
    print("alerts without a firing unit test: " + " ".join(missing))
    raise SystemExit(1)
PY
  ); then pass "prometheus: every alert fires in a unit test"; else say "$out"; fail "prometheus: untested alerts"; fi
  # Every daemon is scraped on its HTTP port and alerts go to the alerter.
  local ok=1
  for t in api:9754 heartbeat-worker:9755 alerter:9756 backup-agent:9757 \
    node-exporter:9100 postgres-exporter:9187 rabbitmq:15692; do
    grep -q "\"$t\"" deploy/prometheus/prometheus.yml || { say "prometheus.yml: no scrape target $t"; ok=0; }
  done
  grep -A10 '^alerting:' deploy/prometheus/prometheus.yml | grep -q '"alerter:9756"' || { say "prometheus.yml: alerts not sent to alerter:9756"; ok=0; }
  if ((ok)); then pass "prometheus: scrape targets and alerting"; else fail "prometheus: scrape targets"; fi
}

# ----------------------------------------------- metric names (grafana) --
# Metric names the daemons' source mentions, plus recording rules and `up`.
metric_check() { # mode(grafana|rules)
  "$PY" - "$1" "$ROOT" <<'PY'
import glob, json, os, re, sys
mode, root = sys.argv[1], sys.argv[2]
src = ""
for p in glob.glob(os.path.join(root, "crates/*/src/**/*.rs"), recursive=True):
    src += open(p, encoding="utf-8").read()
exported = set(re.findall(r'"((?:opsloop|process)_[a-z0-9_]+)"', src))
rules_text = "".join(open(p).read() for p in glob.glob(os.path.join(root, "deploy/prometheus/rules/*.yml")))
recorded = set(re.findall(r"record:\s*(\S+)", rules_text))
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
            "unless", "offset", "inf", "nan", "le", "time", "vector", "scalar"}
def metrics_in(expr):
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)          # strings
    e = re.sub(r"\{[^}]*\}", "", e)                         # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)                        # ranges
    e = re.sub(r"\boffset\s+-?\d+[a-z]+", "", e)            # offsets
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    e = re.sub(r"\$\w+", "", e)                              # grafana variables
    names = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", e):
        tail = e[m.end():].lstrip()
        if tail.startswith("("):
            continue                                          # function call
        w = m.group(0)
        if w.lower() in KEYWORDS or re.fullmatch(r"\d+[smhdwy]?", w):
            continue
        names.add(w)
    return names
# Exporters Prometheus scrapes besides the daemons (node-exporter).
EXPORTER_PREFIXES = ("node_",)
def known(name):
    if name in recorded or name == "up" or name in exported:
        return True
    if mode == "rules" and name.startswith(EXPORTER_PREFIXES):
        return True
    base = re.sub(r"_(bucket|count|sum)$", "", name)
    return base in exported
errors, notes = [], []
if mode == "grafana":
    prov = open(os.path.join(root, "deploy/grafana/provisioning/datasources/prometheus.yml")).read()
    uid = re.search(r"uid:\s*(\S+)", prov).group(1)
    files = sorted(glob.glob(os.path.join(root, "deploy/grafana/dashboards/*.json")))
    # The overview: Grafana's home dashboard in the compose file.
    compose = open(os.path.join(root, "deploy/compose/docker-compose.yml")).read()
    home_m = re.search(r"GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH:\s*\S*/([^/\s]+\.json)", compose)
    home = home_m.group(1) if home_m else None
    if home is None or not os.path.isfile(os.path.join(root, "deploy/grafana/dashboards", home)):
        errors.append(f"docker-compose.yml: GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH names no dashboard of deploy/grafana/dashboards ({home})")
    if len(files) < 5:
        errors.append(f"expected a dashboard per concern (5), found {len(files)}")
    uids = set()
    for f in files:
        name = os.path.basename(f)
        try:
            d = json.load(open(f))
        except ValueError as e:
            errors.append(f"{name}: invalid JSON: {e}")
            continue
        for k in ("uid", "title", "panels", "schemaVersion"):
            if k not in d:
                errors.append(f"{name}: no {k}")
        if d.get("uid") in uids:
            errors.append(f"{name}: duplicate uid {d.get('uid')}")
        uids.add(d.get("uid"))
        # Importable anywhere: a datasource variable defaulting to the
        # provisioned uid, __inputs for the import dialog, job/instance.
        tvars = {v.get("name"): v for v in d.get("templating", {}).get("list", [])}
        if tvars.get("datasource", {}).get("type") != "datasource":
            errors.append(f"{name}: no datasource variable")
        elif tvars["datasource"].get("current", {}).get("value") != uid:
            errors.append(f"{name}: the datasource variable does not default to the provisioned {uid}")
        for v in ("job", "instance"):
            if v not in tvars:
                errors.append(f"{name}: no {v} variable")
        if not any(i.get("type") == "datasource" for i in d.get("__inputs", [])):
            errors.append(f"{name}: no __inputs datasource")
        ids = [p.get("id") for p in d.get("panels", [])]
        if len(ids) != len(set(ids)):
            errors.append(f"{name}: duplicate panel ids")
        # Links: a dashboards link by a tag every opsloop dashboard carries.
        tags = set(d.get("tags", []))
        if "opsloop" not in tags:
            errors.append(f"{name}: no opsloop tag (the dashboards link lists by it)")
        if not any(l.get("type") == "dashboards" and l.get("tags") and set(l["tags"]) <= {"opsloop"}
                   for l in d.get("links", [])):
            errors.append(f"{name}: no link to the other dashboards (type dashboards, tags [opsloop])")
        # Annotations: restarts and emergency-stop engagements, on the
        # datasource variable, from metrics the daemons export.
        notes_exprs = []
        for a in d.get("annotations", {}).get("list", []):
            if a.get("builtIn"):
                continue
            expr = a.get("expr", "")
            if a.get("datasource", {}).get("uid") != "${datasource}":
                errors.append(f"{name}/annotation {a.get('name')}: datasource is not the ${{datasource}} variable")
            if not a.get("enable"):
                errors.append(f"{name}/annotation {a.get('name')}: not enabled")
            for m in sorted(metrics_in(expr)):
                if not known(m):
                    errors.append(f"{name}/annotation {a.get('name')}: metric {m} is exported by no daemon")
            notes_exprs.append(expr)
        for metric, what in (("process_start_time_seconds", "daemon restarts"),
                             ("opsloop_emergency_stop_engaged", "emergency-stop engagements")):
            if not any(metric in metrics_in(e) for e in notes_exprs):
                errors.append(f"{name}: no annotation for {what} ({metric})")
        if name == home:
            home_exprs = [(p.get("title", ""), t.get("expr", "")) for p in d.get("panels", [])
                          for t in p.get("targets", [])]
            # The error budget of the 99.9 % availability SLO over 30 days,
            # from the api's request metrics.
            if not any("error budget" in title.lower() and "opsloop_grpc_requests_total" in metrics_in(e)
                       and "[30d]" in e and ("0.999" in e or "0.001" in e) for title, e in home_exprs):
                errors.append(f"{name}: no 'Error budget remaining' panel (opsloop_grpc_requests_total over [30d] against 99.9 %)")
            # Every loop-state gauge (crates/core/src/loop_metrics.rs) has a panel.
            loop_src = open(os.path.join(root, "crates/core/src/loop_metrics.rs"), encoding="utf-8").read()
            for m in re.findall(r'pub const [A-Z_]+: &str = "(opsloop_[a-z0-9_]+)"', loop_src):
                if not any(m in metrics_in(e) for _, e in home_exprs):
                    errors.append(f"{name} (the home dashboard): no panel shows loop-state metric {m}")
        for p in d.get("panels", []):
            title = p.get("title", "?")
            if p.get("type") == "row":
                continue
            if p.get("datasource", {}).get("uid") != "${datasource}":
                errors.append(f"{name}/{title}: datasource is not the ${{datasource}} variable")
            targets = p.get("targets", [])
            if not targets:
                errors.append(f"{name}/{title}: no queries")
            for t in targets:
                ms = metrics_in(t.get("expr", ""))
                if not ms:
                    errors.append(f"{name}/{title}: query names no metric: {t.get('expr')!r}")
                for m in sorted(ms):
                    if not known(m):
                        errors.append(f"{name}/{title}: metric {m} is exported by no daemon")
else:
    import yaml
    used = set()
    for p in glob.glob(os.path.join(root, "deploy/prometheus/rules/*.yml")):
        for g in yaml.safe_load(open(p))["groups"]:
            for r in g["rules"]:
                used |= metrics_in(r["expr"])
    notes = [m for m in sorted(used) if not known(m)]
print("\n".join(errors or notes))
sys.exit(1 if errors else 0)
PY
}

check_grafana() {
  local out
  if out=$("$PY" - <<'PY' 2>&1
import glob, yaml, sys
bad = 0
for f in glob.glob("deploy/grafana/provisioning/*/*.yml"):
    d = yaml.safe_load(open(f))
    if d.get("apiVersion") != 1 or not (d.get("datasources") or d.get("providers")):
        print(f"{f}: not a Grafana provisioning file"); bad = 1
sys.exit(bad)
PY
  ); then pass "grafana: provisioning YAML"; else say "$out"; fail "grafana: provisioning"; fi
  if out=$(metric_check grafana 2>&1); then pass "grafana: dashboards JSON, every query names an exported metric"; else
    say "$out"; fail "grafana: dashboards"
  fi
  if out=$(metric_check rules 2>&1) && [[ -n "$out" ]]; then
    say "note metrics used by alert rules but exported by no daemon yet: $(tr '\n' ' ' <<<"$out")"
    [[ "${STRICT_METRICS:-1}" == 1 ]] && fail "prometheus: rule metrics not exported"
  fi
}

# ----------------------------------------------------------------- docs --
# Every alert has a section in docs/monitoring.md (its runbook_url anchor);
# every metric the daemons export is described there and has HELP text in
# telemetry.rs (a failure, or a note with STRICT_METRICS=0).
check_docs() {
  local out
  if out=$("$PY" - "$ROOT" <<'PY' 2>&1
import glob, os, re, sys, yaml
root = sys.argv[1]
doc = open(os.path.join(root, "docs/monitoring.md")).read()
headings = {h.strip().lower() for h in re.findall(r"^###\s+(.+)$", doc, re.M)}
errors, notes = [], []
# runbook_url is absolute, on the committed base (render_rules.sh rewrites it).
runbook_base = open(os.path.join(root, "deploy/prometheus/runbook_base_url")).read().strip()
if not re.fullmatch(r"https?://[^\s\"#]+", runbook_base):
    errors.append(f"deploy/prometheus/runbook_base_url {runbook_base!r} is not an absolute URL")
for p in glob.glob(os.path.join(root, "deploy/prometheus/rules/*.yml")):
    for g in yaml.safe_load(open(p))["groups"]:
        for r in g["rules"]:
            if "alert" not in r:
                continue
            name = r["alert"]
            if name.lower() not in headings:
                errors.append(f"docs/monitoring.md has no section for alert {name}")
            url = r.get("annotations", {}).get("runbook_url", "")
            if url != f"{runbook_base}#{name.lower()}":
                errors.append(f"{name}: runbook_url {url!r} is not {runbook_base}#{name.lower()}")
src = ""
for p in glob.glob(os.path.join(root, "crates/*/src/**/*.rs"), recursive=True):
    src += open(p, encoding="utf-8").read()
recorded = set(re.findall(r'(?:counter|gauge|histogram)!\(\s*"([a-z0-9_]+)"', src))
# Metric-name constants; `*_CHANNEL` constants name PostgreSQL NOTIFY
# channels and `COOKIE` the console's session cookie.
recorded |= {v for k, v in re.findall(r'pub const ([A-Z_]+): &str = "(opsloop_[a-z0-9_]+)"', src)
             if not (k.endswith("_CHANNEL") or k == "COOKIE")}
telemetry = open(os.path.join(root, "crates/core/src/telemetry.rs"), encoding="utf-8").read()
help_block = telemetry[telemetry.find("METRIC_HELP"):]
described = set(re.findall(r'\(\s*"(opsloop_[a-z0-9_]+)"', help_block))
described |= {v for k, v in re.findall(r'pub const ([A-Z_]+): &str = "(opsloop_[a-z0-9_]+)"', src)
              if re.search(rf"::{k}\b", help_block)}
for m in sorted(recorded):
    if f"`{m}`" not in doc:
        notes.append(m)
    if m not in described:
        notes.append(f"{m}(no HELP in telemetry.rs METRIC_HELP)")
for path in ("docs/runbook.md", "docs/deploy.md", "docs/postmortem-template.md", "deploy/systemd/README.md"):
    if not os.path.isfile(os.path.join(root, path)):
        errors.append(f"{path} missing")
if errors:
    print("\n".join(errors)); sys.exit(1)
if notes:
    print("NOTE " + " ".join(notes))
PY
  ); then
    pass "docs: every alert has its section in docs/monitoring.md"
    if [[ "$out" == NOTE* ]]; then
      say "note metrics exported but not described in docs/monitoring.md (or without HELP): ${out#NOTE }"
      [[ "${STRICT_METRICS:-1}" == 1 ]] && fail "docs: undocumented metrics"
    fi
  else
    say "$out"; fail "docs: monitoring reference"
  fi
}

# -------------------------------------------------------------- scripts --
check_scripts() {
  local out ok=1 f
  for f in scripts/check_deploy.sh scripts/smoke.sh scripts/release_check.sh scripts/daily_health_check.sh \
    scripts/backup_now.sh scripts/restore.sh scripts/rotate_secrets_check.sh deploy/compose/init-secrets.sh \
    scripts/compose_e2e.sh scripts/systemd_e2e.sh scripts/offline_images.sh scripts/lib/docker_engine.sh \
    scripts/test.sh scripts/go_no_go.sh scripts/lib/ops_common.sh deploy/prometheus/render_rules.sh; do
    [[ -f "$f" ]] || continue
    if ! out=$(bash -n "$f" 2>&1 && shellcheck -x "$f" 2>&1); then say "$out"; ok=0; fail "scripts: $f"; fi
  done
  ((ok)) && pass "scripts: bash -n and shellcheck"
}

# Arguments pick checks (`check_deploy.sh grafana docs`); none runs all.
all_checks=(compose docker systemd prometheus grafana docs scripts)
checks=("$@")
((${#checks[@]})) || checks=("${all_checks[@]}")
for c in "${checks[@]}"; do
  case " ${all_checks[*]} " in
    *" $c "*) "check_$c" ;;
    *) say "check_deploy: unknown check $c (one of: ${all_checks[*]})" >&2; exit 2 ;;
  esac
done

elapsed=$(($(date +%s) - started))
if ((${#failed[@]})); then
  say "check_deploy: FAILED (${elapsed}s): ${failed[*]}"
  exit 1
fi
say "check_deploy: all checks passed (${elapsed}s)"
