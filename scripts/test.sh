#!/usr/bin/env bash
# Sets up the machine (scripts/setup.sh) and runs every check CI runs: formatting, clippy, and all tests
# (unit, property, simulation, and scenario tests against real etcd and real PostgreSQL).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "test: cargo fmt --check"
cargo fmt --all -- --check
echo "test: cargo clippy -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "test: cargo test"
cargo test --workspace "$@"
