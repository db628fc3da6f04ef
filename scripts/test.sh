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
start=$SECONDS
cargo test --workspace --all-targets --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
echo "test: cargo test took $((SECONDS - start)) s"
# The failover-slot scenarios again on PostgreSQL 16 (copy) and 18 (native) (the runs above use Debian's 15): slot files, slot
# functions, their views, and which database pg_replication_slot_advance accepts differ between majors. Any suite
# runs on any of 15-18 the same way, by hand; the store-outage scenarios (about 8 minutes a major) run on 15 here
# and on 18 by hand, to keep CI under 45 minutes:
#   KEEL_TEST_PG_VERSION=18 cargo test -p keel --test outage_scenarios
if [ "$status" = 0 ] && [ $# = 0 ]; then
    for major in 16 18; do
        # 16: copies created on the standby without a restart, advanced in their own databases. 18: copy mode's
        # mechanics (slot_scenarios pins failover_slots: copy, its failsafe scenario runs native) and application
        # databases with native slot sync (the default on 17+). slot_scenarios runs on 16 by hand.
        case "$major" in
            16) suites="slot_databases slot_copy_online" ;;
            *) suites="slot_scenarios slot_databases" ;;
        esac
        for suite in $suites; do
            echo "test: $suite on PostgreSQL $major"
            start=$SECONDS
            KEEL_TEST_PG_VERSION=$major cargo test -p keel --test "$suite" 2>&1 | tee -a "$log"
            suite_status=${PIPESTATUS[0]}
            echo "test: $suite on PostgreSQL $major took $((SECONDS - start)) s"
            [ "$suite_status" = 0 ] || status=$suite_status
        done
    done
    # Native failover slots (17+; on 18 the suites above run native too, failover_slots defaulting to auto).
    echo "test: slot_native on PostgreSQL 17"
    start=$SECONDS
    KEEL_TEST_PG_VERSION=17 cargo test -p keel --test slot_native 2>&1 | tee -a "$log"
    suite_status=${PIPESTATUS[0]}
    echo "test: slot_native on PostgreSQL 17 took $((SECONDS - start)) s"
    [ "$suite_status" = 0 ] || status=$suite_status
fi
# The fault-injection suite's short seeded run (docs/reliability.md): 6 rounds covering the partition, freeze and
# kill faults, in network namespaces (its own addresses and names, so it cannot collide with the tests), about 6
# minutes in the debug profile. The long run (100+ rounds, --release) is run by hand.
if [ "$status" = 0 ] && [ $# = 0 ]; then
    echo "test: chaos (fault injection, 6 rounds, seed 1)"
    start=$SECONDS
    cargo run -q -p keel --example chaos -- --rounds 6 --seed 1 \
        --faults primary-etcd-partition,primary-isolated,replica-isolated,freeze-primary-agent,freeze-primary-postgres,kill-primary-both \
        2>&1 | tee -a "$log"
    chaos_status=${PIPESTATUS[0]}
    echo "test: chaos took $((SECONDS - start)) s"
    [ "$chaos_status" = 0 ] || status=$chaos_status
fi
set -e
# One closing line with the totals over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
     END { printf "test: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
