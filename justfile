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
