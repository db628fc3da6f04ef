#!/usr/bin/env bash
# Idle store load of a three-node Patroni cluster, for comparison with `crates/keel/examples/bench.rs`:
# its own etcd, three Patroni 4.1.5 nodes on PostgreSQL 15 with ttl 30 / loop_wait 10 / retry_timeout 10, and
# etcd's Prometheus counters read over 60 s once the replicas stream (see docs/benchmarks.md). With REJOIN=N,
# then N times: kill -9 of the primary's Patroni and postmaster, a new primary accepting writes, Patroni of the
# killed node started again, and the time until the new primary's pg_stat_replication shows it streaming.
#
#   /usr/bin/python3 -m venv /opt/patroni-venv    # a system Python that the postgres user can run
#   /opt/patroni-venv/bin/pip install 'patroni[etcd3]==4.1.5' psycopg2-binary
#   REJOIN=3 scripts/patroni-store-load.sh        # as root (Patroni runs as postgres) or as the PostgreSQL user
#
# Environment: PATRONI_VENV (default /opt/patroni-venv), PG_BIN (default /usr/lib/postgresql/15/bin),
# BASE_PORT (default 24000: etcd on BASE_PORT and +1, REST APIs on +11..+13, PostgreSQL on +21..+23).
set -euo pipefail
VENV=${PATRONI_VENV:-/opt/patroni-venv}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
BASE=${BASE_PORT:-24000}
WINDOW=${WINDOW:-60}
DIR=$(mktemp -d /tmp/patroni-load-XXXXXX)
RUN=()
if [ "$(id -u)" = 0 ]; then chown postgres: "$DIR"; RUN=(runuser -u postgres --); fi
PIDS=()
declare -A NODE_PID
cleanup() {
  # Patroni stops its PostgreSQL on SIGTERM; whatever is left after 30 s is killed by its own pid.
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for _ in $(seq 1 30); do
    alive=0; for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break; sleep 1
  done
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  for f in "$DIR"/p*/data/postmaster.pid; do [ -f "$f" ] && kill -9 "$(head -1 "$f")" 2>/dev/null || true; done
  rm -rf "$DIR"
}
trap cleanup EXIT

ETCD=127.0.0.1:$BASE
"${RUN[@]}" etcd --name pl --data-dir "$DIR/etcd" --listen-client-urls "http://$ETCD" \
  --advertise-client-urls "http://$ETCD" --listen-peer-urls "http://127.0.0.1:$((BASE + 1))" \
  --initial-advertise-peer-urls "http://127.0.0.1:$((BASE + 1))" \
  --initial-cluster "pl=http://127.0.0.1:$((BASE + 1))" >"$DIR/etcd.log" 2>&1 &
PIDS+=($!)
until curl -sf "http://$ETCD/health" >/dev/null; do sleep 0.2; done

for i in 1 2 3; do
  d=$DIR/p$i; "${RUN[@]}" mkdir -p "$d"
  "${RUN[@]}" tee "$d/patroni.yml" >/dev/null <<YML
scope: loadbench
name: p$i
restapi: {listen: 127.0.0.1:$((BASE + 10 + i)), connect_address: 127.0.0.1:$((BASE + 10 + i))}
etcd3: {hosts: "$ETCD"}
bootstrap:
  dcs:
    ttl: 30
    loop_wait: 10
    retry_timeout: 10
    maximum_lag_on_failover: 1048576
    postgresql: {use_pg_rewind: true, use_slots: true}
  initdb: [{encoding: UTF8}, data-checksums]
postgresql:
  listen: 127.0.0.1:$((BASE + 20 + i))
  connect_address: 127.0.0.1:$((BASE + 20 + i))
  data_dir: $d/data
  bin_dir: $PG_BIN
  pgpass: $d/pgpass
  authentication:
    replication: {username: replicator, password: rep-pass}
    superuser: {username: postgres, password: su-pass}
    rewind: {username: rewind_user, password: rw-pass}
  parameters: {unix_socket_directories: "$d", shared_buffers: 16MB, max_connections: 30}
  pg_hba:
    - local all all trust
    - host replication replicator 127.0.0.1/32 md5
    - host all all 127.0.0.1/32 md5
YML
  "${RUN[@]}" "$VENV/bin/patroni" "$d/patroni.yml" >"$d/patroni.log" 2>&1 &
  PIDS+=($!); NODE_PID[$i]=$!
  sleep 2
done

echo "waiting for a leader and two streaming replicas..."
for _ in $(seq 1 300); do
  n=$(curl -sf "http://127.0.0.1:$((BASE + 11))/cluster" | python3 -c \
    'import json,sys; print(sum(m.get("state") == "streaming" for m in json.load(sys.stdin)["members"]))' 2>/dev/null || echo 0)
  [ "$n" = 2 ] && break
  sleep 1
done
[ "$n" = 2 ] || { echo "cluster did not come up; logs in $DIR" >&2; tail -20 "$DIR"/p*/patroni.log >&2; exit 1; }
"$VENV/bin/patronictl" -c "$DIR/p1/patroni.yml" list || true
sleep 30   # let the member keys settle after bootstrap, as the Keel benchmark does

count() {
  curl -sf "http://$ETCD/metrics" | python3 -c '
import re, sys
out = {}
for line in sys.stdin:
    m = re.match(r"(grpc_server_(?:msg_received|started)_total)\{(.*)\} (\S+)", line)
    if not m: continue
    method = re.search(r"grpc_method=\"([^\"]+)\"", m.group(2)).group(1)
    key = (method, m.group(1))
    out[key] = out.get(key, 0) + float(m.group(3))
for (method, metric), v in sorted(out.items()): print(method, metric, v)'
}
count >"$DIR/before"; sleep "$WINDOW"; count >"$DIR/after"
python3 - "$DIR/before" "$DIR/after" "$WINDOW" <<'PY'
import sys
def load(p):
    return {(a, b): float(c) for a, b, c in (l.split() for l in open(p))}
b, a, w = load(sys.argv[1]), load(sys.argv[2]), float(sys.argv[3])
methods = sorted({m for m, _ in a})
print("| etcd gRPC method | messages received | calls/streams started |\n|---|---|---|")
tot = {"grpc_server_msg_received_total": 0, "grpc_server_started_total": 0}
for m in methods:
    d = {k: a.get((m, k), 0) - b.get((m, k), 0) for k in tot}
    if any(d.values()):
        print(f"| {m} | {d['grpc_server_msg_received_total']:.0f} | {d['grpc_server_started_total']:.0f} |")
    for k in tot: tot[k] += d[k]
print(f"idle store load over {w:.0f} s: {tot['grpc_server_msg_received_total'] / w:.2f} requests/s (messages received), "
      f"{tot['grpc_server_started_total'] / w:.2f} calls or streams opened/s")
PY

# Rejoin after kill -9, REJOIN times.
sql() { PGPASSWORD=su-pass "$PG_BIN/psql" -h 127.0.0.1 -p "$1" -U postgres -d postgres -Atqc "$2" 2>/dev/null || true; }
leader() {
  local p out
  for p in 11 12 13; do
    out=$(curl -sf --max-time 2 "http://127.0.0.1:$((BASE + p))/cluster") || continue
    echo "$out" | python3 -c 'import json, sys
print(next((m["name"][1:] for m in json.load(sys.stdin)["members"] if m["role"] == "leader"), ""))'
    return
  done
}
for round in $(seq 1 "${REJOIN:-0}"); do
  old=$(leader)
  [ -n "$old" ] || { echo "no leader" >&2; exit 1; }
  pm=$(head -1 "$DIR/p$old/data/postmaster.pid")
  # As root, NODE_PID is runuser's pid and Patroni its child.
  pat=$(pgrep -P "${NODE_PID[$old]}" | head -1 || true)
  kill -9 ${pat:+"$pat"} "${NODE_PID[$old]}" "$pm"
  new=""
  for _ in $(seq 1 240); do
    l=$(leader)
    if [ -n "$l" ] && [ "$l" != "$old" ] && [ "$(sql $((BASE + 20 + l)) 'SELECT pg_is_in_recovery()')" = f ]; then new=$l; break; fi
    sleep 0.25
  done
  [ -n "$new" ] || { echo "no new primary after killing p$old" >&2; exit 1; }
  t0=$(date +%s.%N)
  "${RUN[@]}" "$VENV/bin/patroni" "$DIR/p$old/patroni.yml" >>"$DIR/p$old/patroni.log" 2>&1 &
  PIDS+=($!); NODE_PID[$old]=$!
  for _ in $(seq 1 2400); do
    got=$(sql $((BASE + 20 + new)) "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'p$old' AND state = 'streaming'")
    [ "$got" = 1 ] && break
    sleep 0.1
  done
  printf 'rejoin %d: p%s streaming from p%s %.1f s after Patroni started\n' "$round" "$old" "$new" \
    "$(echo "$(date +%s.%N) - $t0" | bc)"
  sleep 20   # let the member keys settle before the next kill
done
