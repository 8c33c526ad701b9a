# opsloop tasks. `just --list` shows them.

# Run every role in one process on SQLite and the in-process bus.
dev:
    cargo run --release --bin opsloop -- dev

# Run every role with a demo worker and proposals flowing.
demo:
    cargo run --release --bin opsloop -- dev --demo

# The whole test suite (starts PostgreSQL/RabbitMQ when they are down).
test:
    bash scripts/test.sh

# What CI runs: fmt, clippy, tests.
ci:
    bash .ci/run

# Apply migrations to the configured database.
migrate:
    cargo run --release --bin opsloop -- migrate up

fmt:
    cargo fmt --all

lint:
    cargo clippy --workspace --all-targets -- -D warnings

# Check the deployment files with the tools that know their formats.
check-deploy:
    bash scripts/check_deploy.sh

# Health, metrics and a proposal through a finished mission, against running daemons.
smoke:
    bash scripts/smoke.sh

# fmt, clippy, quick tests, deployment files, coverage (floor in README),
# smoke x3; the last line names the failed stage.
release-check:
    bash scripts/release_check.sh

# Line coverage per crate of the unit tests, against the floor (cargo-llvm-cov).
coverage:
    RELEASE_CHECK_STAGES=coverage bash scripts/release_check.sh

# Go/No-Go before a release: release check, smoke x3, secrets, /healthz and
# /metrics, broker connected, a verified backup under a day old; exit 0 = GO.
go-no-go *ARGS:
    bash scripts/go_no_go.sh {{ARGS}}

# The daily checklist: `just daily-health --morning` (09:00) or `--evening` (18:00).
daily-health *ARGS:
    bash scripts/daily_health_check.sh {{ARGS}}

backup-now:
    bash scripts/backup_now.sh

# Restore a backup (lists them without an id): docs/runbook.md#restore.
restore *ARGS:
    bash scripts/restore.sh {{ARGS}}

# Rotate the compose stack's secrets, checking after each phase.
rotate-secrets *ARGS:
    bash scripts/rotate_secrets_check.sh {{ARGS}}

# The compose stack (needs a Docker engine).
compose-up:
    docker compose -f deploy/compose/docker-compose.yml up -d --build

# The compose stack end to end: release build, images (offline stand-ins),
# up, smoke, a proposal through to an alert, kill -9 of each daemon, backup
# and restore, down -v (starts and stops dockerd when none answers).
compose-e2e:
    bash scripts/compose_e2e.sh

# The systemd units under systemd in an unprivileged container: start,
# ready, LoadCredential=, kill -9 and Restart= (needs release binaries).
systemd-e2e:
    bash scripts/systemd_e2e.sh

# Registry-free stand-ins for postgres, rabbitmq, prometheus and the runtime
# image's Debian base, from debootstrap and Debian packages.
offline-images:
    bash scripts/offline_images.sh

# Every benchmark scenario against its baseline (results in bench/README.md).
bench:
    bash bench/run.sh

# Every scenario at tiny sizes, as CI runs it.
bench-smoke:
    BENCH_PROFILE=debug bash bench/run.sh --smoke
