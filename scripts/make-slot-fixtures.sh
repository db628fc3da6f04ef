#!/usr/bin/env bash
# Regenerates the real replication slot state files that crates/keel-core/tests/slotfile.rs reads:
#
#   crates/keel-core/tests/fixtures/slotfile/pg<major>_<kind>.state     pg_replslot/<slot>/state, byte for byte
#   crates/keel-core/tests/fixtures/slotfile/pg<major>_<kind>.expected  the same slot as pg_replication_slots saw it
#
# kinds: logical (test_decoding, two_phase, and failover on 17+), pgoutput (pgoutput), physical (reserved at once).
# A build without test_decoding (16 from the pgserver wheel) makes the `logical` slot with pgoutput too, consumed
# through a publication.
# For each major it initdbs a throw-away cluster in a temporary directory, starts it on a Unix socket only
# (listen_addresses=''), creates the slots, writes a little, checkpoints, records the view, stops the server with a
# fast shutdown (a shutdown checkpoint saves every slot) and copies the files. Nothing is left running.
#
#   scripts/make-slot-fixtures.sh [major...]      default: 15 16 17 18
#
# Binaries: 15 from /usr/lib/postgresql/15/bin, others from $KEEL_PG_ROOT/<major>/bin (scripts/setup.sh).
# PostgreSQL refuses to run as root: as root, every PostgreSQL program runs as the postgres OS user.
set -euo pipefail

KEEL_PG_ROOT=${KEEL_PG_ROOT:-/opt/keel/pg}
repo=$(cd "$(dirname "$0")/.." && pwd)
out="$repo/crates/keel-core/tests/fixtures/slotfile"
majors=("$@")
[ ${#majors[@]} -gt 0 ] || majors=(15 16 17 18)
say() { printf 'make-slot-fixtures: %s\n' "$*"; }

as_pg() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

bin_dir() {
    if [ "$1" = 15 ]; then echo /usr/lib/postgresql/15/bin; else echo "$KEEL_PG_ROOT/$1/bin"; fi
}

running_ctl=() # "pg_ctl data_dir" of a server to stop on exit
tmp_dirs=()
cleanup() {
    if [ ${#running_ctl[@]} -gt 0 ]; then
        as_pg "${running_ctl[0]}" stop -m immediate -w -D "${running_ctl[1]}" >/dev/null 2>&1 || true
    fi
    for d in "${tmp_dirs[@]}"; do rm -rf "$d"; done
}
trap cleanup EXIT

mkdir -p "$out"
for major in "${majors[@]}"; do
    bin=$(bin_dir "$major")
    if [ ! -x "$bin/initdb" ]; then
        say "PostgreSQL $major is not in $bin: run scripts/setup.sh as root" >&2
        exit 1
    fi
    tmp=$(mktemp -d /tmp/keel-slot-fixtures.XXXXXX)
    tmp_dirs+=("$tmp")
    [ "$(id -u)" != 0 ] || chown postgres: "$tmp"
    chmod 700 "$tmp"
    data="$tmp/data"
    as_pg "$bin/initdb" -D "$data" -U postgres --no-sync --auth=trust -E UTF8 --locale=C >/dev/null
    cat >>"$data/postgresql.conf" <<EOF
listen_addresses = ''
unix_socket_directories = '$tmp'
port = 5432
wal_level = logical
max_replication_slots = 10
max_wal_senders = 10
shared_buffers = 16MB
fsync = off
EOF
    running_ctl=("$bin/pg_ctl" "$data")
    as_pg "$bin/pg_ctl" start -w -D "$data" -l "$tmp/log" >/dev/null
    psql() { as_pg "$bin/psql" -X -q -v ON_ERROR_STOP=1 -h "$tmp" -p 5432 -U postgres -d postgres "$@"; }

    failover=""
    [ "$major" -lt 17 ] || failover=", true" # failover (17+)
    # The `logical` slot's plugin, and how to consume from it.
    plugin=test_decoding
    consume="pg_logical_slot_get_changes('keel_logical', NULL, NULL)"
    if [ ! -f "$("$bin/pg_config" --pkglibdir)/test_decoding.so" ]; then
        say "PostgreSQL $major has no test_decoding: its keel_logical slot uses pgoutput"
        plugin=pgoutput
        consume="pg_logical_slot_get_binary_changes('keel_logical', NULL, NULL, 'proto_version', '1', 'publication_names', 'keel_pub')"
    fi
    psql >/dev/null <<EOF
SELECT pg_create_physical_replication_slot('keel_physical', immediately_reserve => true);
CREATE TABLE t (x int);
CREATE PUBLICATION keel_pub FOR TABLE t;
INSERT INTO t SELECT generate_series(1, 100);
SELECT pg_create_logical_replication_slot('keel_logical', '$plugin', false, true$failover); -- temporary, two_phase
INSERT INTO t SELECT generate_series(101, 200);
SELECT pg_create_logical_replication_slot('keel_pgoutput', 'pgoutput');
INSERT INTO t SELECT generate_series(201, 300);
-- Consume what the logical slot has, so confirmed_flush moves past the creation point.
SELECT count(*) FROM $consume;
CHECKPOINT;
EOF
    cols="slot_name, coalesce(plugin, ''), slot_type, coalesce(datoid, 0), temporary,
          coalesce(xmin::text, '0'), coalesce(catalog_xmin::text, '0'),
          coalesce(restart_lsn::text, '0/0'), coalesce(confirmed_flush_lsn::text, '0/0'), two_phase"
    [ "$major" -lt 17 ] || cols="$cols, failover, synced"
    for kind in logical pgoutput physical; do
        psql -A -t -F '|' -c "SELECT $cols FROM pg_replication_slots WHERE slot_name = 'keel_$kind'" \
            >"$tmp/$kind.view"
    done
    as_pg "$bin/pg_ctl" stop -m fast -w -D "$data" >/dev/null
    running_ctl=()
    for kind in logical pgoutput physical; do
        # Shutdown saved every slot, so the file and the view agree.
        IFS='|' read -r name plugin type datoid temporary xmin catalog_xmin restart confirmed two_phase failover synced \
            <"$tmp/$kind.view"
        {
            echo "major=$major"
            echo "version=$("$bin/postgres" --version)"
            echo "slot_name=$name"
            echo "plugin=$plugin"
            echo "slot_type=$type"
            echo "datoid=$datoid"
            echo "temporary=$temporary"
            echo "xmin=$xmin"
            echo "catalog_xmin=$catalog_xmin"
            echo "restart_lsn=$restart"
            echo "confirmed_flush_lsn=$confirmed"
            echo "two_phase=$two_phase"
            [ "$major" -lt 17 ] || echo "failover=$failover"
            [ "$major" -lt 17 ] || echo "synced=$synced"
        } >"$out/pg${major}_$kind.expected"
        cp "$data/pg_replslot/keel_$kind/state" "$out/pg${major}_$kind.state"
        chmod 644 "$out/pg${major}_$kind.state"
    done
    say "PostgreSQL $major: $(ls "$out"/pg"${major}"_*.state | xargs -n1 basename | tr '\n' ' ')"
done
