#!/usr/bin/env bash
# Failover slots at scale in Patroni, for comparison with `crates/keel/examples/slot_scale.rs`: its own etcd,
# three Patroni 4.1.5 nodes (ttl 30 / loop_wait 10 / retry_timeout 10, wal_level logical), then the same
# scenario: a writer inserting a row every 10 ms, every scale slot advanced to the flush position every second on
# the primary, and N permanent logical slots (test_decoding, database postgres) added with PATCH /config. Measured:
# the time until every replica has every slot and has advanced each copy past the position it was created at
# (Patroni advances only copies it holds ready), and each Patroni process's CPU over WINDOW seconds of that load.
#
#   /opt/patroni-venv/bin/pip install 'patroni[etcd3]==4.1.5' psycopg2-binary
#   SLOTS=200 scripts/patroni-slot-scale.sh       # as root (Patroni runs as postgres) or as the PostgreSQL user
#
# Environment: SLOTS (default 200), PATRONI_VENV (default /opt/patroni-venv), PG_BIN (default
# /usr/lib/postgresql/15/bin), BASE_PORT (default 24100), WINDOW (default 30), DEADLINE (default 600 s).
set -euo pipefail
VENV=${PATRONI_VENV:-/opt/patroni-venv}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
BASE=${BASE_PORT:-24100}
SLOTS=${SLOTS:-200}
WINDOW=${WINDOW:-30}
DEADLINE=${DEADLINE:-600}
DIR=$(mktemp -d /tmp/patroni-slots-XXXXXX)
RUN=()
if [ "$(id -u)" = 0 ]; then chown postgres: "$DIR"; RUN=(runuser -u postgres --); fi
PIDS=()
cleanup() {
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
"${RUN[@]}" etcd --name ps --data-dir "$DIR/etcd" --listen-client-urls "http://$ETCD" \
  --advertise-client-urls "http://$ETCD" --listen-peer-urls "http://127.0.0.1:$((BASE + 1))" \
  --initial-advertise-peer-urls "http://127.0.0.1:$((BASE + 1))" \
  --initial-cluster "ps=http://127.0.0.1:$((BASE + 1))" >"$DIR/etcd.log" 2>&1 &
PIDS+=($!)
until curl -sf "http://$ETCD/health" >/dev/null; do sleep 0.2; done

for i in 1 2 3; do
  d=$DIR/p$i; "${RUN[@]}" mkdir -p "$d"
  "${RUN[@]}" tee "$d/patroni.yml" >/dev/null <<YML
scope: slotscale
name: p$i
restapi: {listen: 127.0.0.1:$((BASE + 10 + i)), connect_address: 127.0.0.1:$((BASE + 10 + i))}
etcd3: {hosts: "$ETCD"}
bootstrap:
  dcs:
    ttl: 30
    loop_wait: 10
    retry_timeout: 10
    maximum_lag_on_failover: 1048576
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters: {wal_level: logical, max_replication_slots: $((SLOTS + 20)), max_wal_senders: 20}
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
  PIDS+=($!)
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

# The scenario and the measurement, with psycopg2 from Patroni's venv.
PGPASSWORD=su-pass "$VENV/bin/python" - "$BASE" "$SLOTS" "$WINDOW" "$DEADLINE" "${PIDS[@]:1}" <<'PY'
import json, os, sys, threading, time, urllib.request
import psycopg2

base, count, window, deadline = (int(a) for a in sys.argv[1:5])
def patroni_process(pid):
    # Started through runuser when run as root: Patroni is its child.
    if open(f"/proc/{pid}/comm").read().strip() == "runuser":
        children = open(f"/proc/{pid}/task/{pid}/children").read().split()
        if children: return int(children[0])
    return pid
patroni_pids = [patroni_process(int(p)) for p in sys.argv[5:]]
print("Patroni processes:", patroni_pids, flush=True)
def rest(i, path, body=None, method="GET"):
    req = urllib.request.Request(f"http://127.0.0.1:{base + 10 + i}{path}", method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)
members = rest(1, "/cluster")["members"]
leader = next(m for m in members if m["role"] == "leader")
replicas = [m for m in members if m["role"] != "leader"]
def conn(port):
    c = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres", connect_timeout=5)
    c.autocommit = True
    return c
primary = conn(leader["port"])
primary.cursor().execute("CREATE TABLE scale_load (id bigserial PRIMARY KEY, at timestamptz DEFAULT now())")
stop = threading.Event()
load = {"rows": 0, "rounds": 0}
def writer():
    c = conn(leader["port"]).cursor()
    while not stop.is_set():
        c.execute("INSERT INTO scale_load DEFAULT VALUES"); load["rows"] += 1; time.sleep(0.01)
def advancer():
    c = conn(leader["port"]).cursor()
    while not stop.is_set():
        c.execute("SELECT count(pg_replication_slot_advance(slot_name, pg_current_wal_flush_lsn())) "
                  "FROM pg_replication_slots WHERE slot_type = 'logical' AND slot_name LIKE 'scale_%' AND NOT active")
        load["rounds"] += 1; time.sleep(1)
threads = [threading.Thread(target=f, daemon=True) for f in (writer, advancer)]
for t in threads: t.start()
slots = {f"scale_{i:04d}": {"type": "logical", "database": "postgres", "plugin": "test_decoding"} for i in range(count)}
t0 = time.monotonic()
rest(1, "/config", {"slots": slots}, "PATCH")
q = "SELECT slot_name, confirmed_flush_lsn - '0/0' FROM pg_replication_slots WHERE slot_name LIKE 'scale_%'"
created, first, ready_at = None, {m["name"]: {} for m in replicas}, {}
while time.monotonic() - t0 < deadline and (created is None or len(ready_at) < len(replicas)):
    if created is None:
        cur = primary.cursor(); cur.execute(q)
        if len(cur.fetchall()) == count: created = time.monotonic() - t0
    for m in replicas:
        if m["name"] in ready_at: continue
        try:
            cur = conn(m["port"]).cursor(); cur.execute(q); rows = dict(cur.fetchall())
        except Exception as e:
            continue
        f = first[m["name"]]
        for s, pos in rows.items():
            if pos is not None: f.setdefault(s, pos)
        moved = sum(1 for s, pos in rows.items() if pos is not None and pos > f.get(s, pos))
        if len(rows) == count and moved == count: ready_at[m["name"]] = time.monotonic() - t0
    time.sleep(0.5)
def ticks(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])
before = {p: ticks(p) for p in patroni_pids}
rows0, rounds0 = load["rows"], load["rounds"]
time.sleep(window)
cpu = {p: (ticks(p) - before[p]) / os.sysconf("SC_CLK_TCK") for p in patroni_pids}
stop.set()
print(f"\n## Patroni 4.1.5, {count} permanent logical slots, PostgreSQL "
      f"{primary.server_version // 10000}, ttl 30, loop_wait 10, retry_timeout 10")
print(f"created on the primary {created:.1f} s after the configuration change" if created else "not all created")
for m in replicas:
    t = ready_at.get(m["name"])
    print(f"every copy advanced on {m['name']}: " + (f"{t:.1f} s" if t else f"not within {deadline} s"))
if len(ready_at) == len(replicas):
    print(f"every copy advanced on every replica: {max(ready_at.values()):.1f} s")
print(f"load over the {window} s CPU window: {load['rows'] - rows0} rows, {load['rounds'] - rounds0} advance rounds")
print("\n| Patroni pid | CPU (s) | CPU (%) |\n|---|---|---|")
for p, s in cpu.items():
    print(f"| {p} | {s:.2f} | {100 * s / window:.1f} |")
PY
