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
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --all-targets "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# The failover-slot scenarios again on PostgreSQL 18 (the runs above use Debian's 15): slot files, slot
# functions and their views differ between majors. The other scenarios run on 18 the same way, by hand:
#   KEEL_TEST_PG_VERSION=18 cargo test -p keel --test scenarios
if [ "$status" = 0 ] && [ $# = 0 ]; then
    echo "test: failover-slot scenarios on PostgreSQL 18"
    KEEL_TEST_PG_VERSION=18 cargo test -p keel --test slot_scenarios 2>&1 | tee -a "$log"
    status=${PIPESTATUS[0]}
fi
set -e
# One closing line with the totals over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
     END { printf "test: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
