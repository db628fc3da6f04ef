#!/usr/bin/env bash
# What a kill -9 failover costs a logical consumer in Patroni, for comparison with `keel demo --failover
# --exit-after` (docs/benchmarks.md, "What a failover costs a consumer"): its own etcd, three Patroni 4.1.5 nodes
# (ttl 20 / loop_wait 2 / retry_timeout 5, asynchronous replication, wal_level logical, use_slots, pg_rewind),
# then the demo's scenario: database `app`, table `demo_changes`, the permanent logical slot `keel_demo`
# (test_decoding) added with PATCH /config, a writer (one INSERT of the next id per transaction, at most one every
# 10 ms, on whichever node GET /cluster names leader), a consumer (`pg_recvlogical --no-loop -s 1` on the current
# primary, restarted on the next one when it exits). Once both replicas hold the slot and Patroni has advanced
# their copies, the primary's Patroni and postmaster get SIGKILL at once; the consumer moves to the new primary
# (its copy of the slot), the killed Patroni is restarted and rejoins, 50 more changes are written, and the
# writer's acknowledged ids, the ids received and the ids on the final primary are tallied as the demo does.
#
#   /opt/patroni-venv/bin/pip install 'patroni[etcd3]==4.1.5' psycopg2-binary
#   scripts/patroni-failover-cost.sh                            # as root (Patroni runs as postgres) or as postgres
#   RUNS=3 PG_BIN=/opt/keel/pg/17/bin/ scripts/patroni-failover-cost.sh
#
# Environment: RUNS (default 1), PATRONI_VENV (default /opt/patroni-venv), PG_BIN (default
# /usr/lib/postgresql/15/bin), BASE_PORT (default 24300; uses BASE_PORT..BASE_PORT+23), DEADLINE (seconds per
# step, default 180), KILL_DELAY (seconds between the copies moving and the kill, default 0 as in the demo),
# KEEP_LOGS (a directory: each run's logs are copied there before cleanup).
# Prints one row per run in the columns of the Keel table in docs/benchmarks.md.
set -euo pipefail
VENV=${PATRONI_VENV:-/opt/patroni-venv}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
BASE=${BASE_PORT:-24300}
RUNS=${RUNS:-1}
DEADLINE=${DEADLINE:-180}
ROWS=()

one_run() {
  local run=$1 i d n
  DIR=$(mktemp -d /tmp/patroni-failover-XXXXXX)
  RUN=()
  if [ "$(id -u)" = 0 ]; then chown postgres: "$DIR"; RUN=(runuser -u postgres --); fi
  PIDS=()
  trap cleanup EXIT

  ETCD=127.0.0.1:$BASE
  "${RUN[@]}" etcd --name pf --data-dir "$DIR/etcd" --listen-client-urls "http://$ETCD" \
    --advertise-client-urls "http://$ETCD" --listen-peer-urls "http://127.0.0.1:$((BASE + 1))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((BASE + 1))" \
    --initial-cluster "pf=http://127.0.0.1:$((BASE + 1))" >"$DIR/etcd.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 150); do curl -sf "http://$ETCD/health" >/dev/null && break; sleep 0.2; done
  curl -sf "http://$ETCD/health" >/dev/null || { echo "etcd did not start; log in $DIR/etcd.log" >&2; return 1; }

  for i in 1 2 3; do
    d=$DIR/p$i; "${RUN[@]}" mkdir -p "$d"
    "${RUN[@]}" tee "$d/patroni.yml" >/dev/null <<YML
scope: failovercost
name: p$i
restapi: {listen: 127.0.0.1:$((BASE + 10 + i)), connect_address: 127.0.0.1:$((BASE + 10 + i))}
etcd3: {hosts: "$ETCD"}
bootstrap:
  dcs:
    ttl: 20
    loop_wait: 2
    retry_timeout: 5
    maximum_lag_on_failover: 1048576
    synchronous_mode: false
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters: {wal_level: logical, max_replication_slots: 20, max_wal_senders: 20, wal_log_hints: 'on'}
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

  echo "run $run: waiting for a leader and two streaming replicas ($DIR)..." >&2
  n=0
  for _ in $(seq 1 "$DEADLINE"); do
    n=$(curl -sf "http://127.0.0.1:$((BASE + 11))/cluster" | python3 -c \
      'import json,sys; print(sum(m.get("state") == "streaming" for m in json.load(sys.stdin)["members"]))' \
      2>/dev/null || echo 0)
    [ "$n" = 2 ] && break
    sleep 1
  done
  [ "$n" = 2 ] || { echo "cluster did not come up; logs in $DIR" >&2; tail -20 "$DIR"/p*/patroni.log >&2; return 1; }

  # The scenario, with psycopg2 from Patroni's venv; its last stdout line is the table row.
  "$VENV/bin/python" - "$BASE" "$DIR" "$PG_BIN" "$DEADLINE" "$run" "${RUN[@]}" :: "${PIDS[@]:1}" \
    >"$DIR/scenario.out" <<'PY' || { cat "$DIR/scenario.out"; return 1; }
import json, os, re, signal, subprocess, sys, threading, time, urllib.request
import psycopg2

base, work, pg_bin, deadline, run = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
rest_args = sys.argv[6:]
sep = rest_args.index("::")
as_postgres, launcher_pids = rest_args[:sep], [int(p) for p in rest_args[sep + 1:]]
SLOT, DB, TABLE, PACE, RETRY, BATCH = "keel_demo", "app", "demo_changes", 0.01, 0.2, 50
PW = "su-pass"
ROW = re.compile(r"^table public\." + TABLE + r": INSERT: id\[integer\]:(-?\d+)")
names = ["p1", "p2", "p3"]
api = {f"p{i}": base + 10 + i for i in (1, 2, 3)}
pg = {f"p{i}": base + 20 + i for i in (1, 2, 3)}
extra_pids = open(os.path.join(work, "extra.pids"), "a")

def log(msg):
    print(f"[run {run}] {msg}", file=sys.stderr, flush=True)

def rest(node, path, body=None, method="GET"):
    req = urllib.request.Request(f"http://127.0.0.1:{api[node]}{path}", method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=3) as r:
        return json.load(r)

def cluster(skip=()):
    for n in names:
        if n in skip: continue
        try: return rest(n, "/cluster")
        except Exception: pass
    return None

def leader(skip=()):
    c = cluster(skip)
    if not c: return None
    return next((m["name"] for m in c["members"] if m["role"] == "leader"), None)

def conn(node, db=DB):
    c = psycopg2.connect(host="127.0.0.1", port=pg[node], user="postgres", password=PW, dbname=db,
                         connect_timeout=3, options="-c statement_timeout=3000")
    c.autocommit = True
    return c

def query(node, sql, db=DB):
    c = conn(node, db)
    try:
        cur = c.cursor(); cur.execute(sql); return cur.fetchall()
    finally:
        c.close()

def wait(what, probe, limit=deadline):
    t0, last = time.monotonic(), "not probed"
    while time.monotonic() - t0 < limit:
        try:
            v = probe()
            if v is not None: return v
        except Exception as e:
            last = str(e).strip()
        time.sleep(0.25)
    raise SystemExit(f"{what}: not reached after {limit} s (last error: {last})")

def writable(node):
    return query(node, "SELECT pg_is_in_recovery()", "postgres")[0][0] is False

class Writer(threading.Thread):
    """One INSERT of the next id per transaction, at most one every 10 ms, on the leader GET /cluster names."""
    def __init__(self):
        super().__init__(daemon=True)
        self.acked, self.at, self.stop, self.error = [], {}, threading.Event(), None
    def run(self):
        c, i = None, 0
        while not self.stop.is_set():
            if c is None:
                try:
                    node = leader()
                    if node is None: raise RuntimeError("no leader")
                    c = conn(node)
                except Exception as e:
                    self.error = str(e).strip(); time.sleep(RETRY); continue
            i += 1
            try:
                c.cursor().execute(f"INSERT INTO {TABLE} (id) VALUES (%s)", (i,))
                self.acked.append(i); self.at[i] = time.monotonic(); time.sleep(PACE)
            except Exception as e:
                self.error = str(e).strip()
                try: c.close()
                except Exception: pass
                c = None; time.sleep(RETRY)

class Consumer(threading.Thread):
    """pg_recvlogical --no-loop on the current leader, started again on the next one when it exits."""
    def __init__(self):
        super().__init__(daemon=True)
        self.stop, self.node, self.proc, self.starts, self.files = threading.Event(), None, None, 0, []
    def run(self):
        while not self.stop.is_set():
            node = leader()
            if node is None: time.sleep(RETRY); continue
            self.starts += 1
            out = os.path.join(work, f"recv-{self.starts}.txt")
            self.files.append(out)
            env = dict(os.environ, PGPASSWORD=PW, PGCONNECT_TIMEOUT="3")
            with open(os.path.join(work, "pg_recvlogical.log"), "a") as err:
                self.proc = subprocess.Popen(
                    [f"{pg_bin}/pg_recvlogical", "-h", "127.0.0.1", "-p", str(pg[node]), "-U", "postgres",
                     "-d", DB, "--slot", SLOT, "--start", "--no-loop", "-s", "1", "-f", out],
                    env=env, stdin=subprocess.DEVNULL, stderr=err)
                extra_pids.write(f"{self.proc.pid}\n"); extra_pids.flush()
                self.node = node
                self.proc.wait()
                self.node = None
            if not self.stop.is_set(): time.sleep(RETRY)
    def received(self):
        counts = {}
        for f in self.files:
            try:
                for line in open(f, errors="replace"):
                    m = ROW.match(line)
                    if m: counts[int(m.group(1))] = counts.get(int(m.group(1)), 0) + 1
            except FileNotFoundError:
                pass
        return counts
    def finish(self):
        self.stop.set()
        p = self.proc
        if p and p.poll() is None:
            p.send_signal(signal.SIGINT)  # pg_recvlogical confirms what it wrote and exits
            try: p.wait(timeout=10)
            except subprocess.TimeoutExpired: p.kill()
        self.join(timeout=15)
        return self.received()

def wait_written(w, n):
    target = len(w.acked) + n
    wait(f"{target} acknowledged inserts", lambda: True if len(w.acked) >= target else None)

def patroni_pid(launcher):
    # Started through runuser when run as root: Patroni is its child.
    if open(f"/proc/{launcher}/comm").read().strip() == "runuser":
        children = open(f"/proc/{launcher}/task/{launcher}/children").read().split()
        if children: return int(children[0])
    return launcher

old = leader()
version = query(old, "SHOW server_version", "postgres")[0][0].split()[0]
major = int(version.split(".")[0])
query(old, "SELECT 1", "postgres")
c = conn(old, "postgres"); c.cursor().execute(f"CREATE DATABASE {DB}"); c.close()
c = conn(old); c.cursor().execute(f"CREATE TABLE {TABLE} (id integer PRIMARY KEY)"); c.close()
rest(old, "/config", {"slots": {SLOT: {"type": "logical", "database": DB, "plugin": "test_decoding"}}}, "PATCH")
wait(f"{SLOT} on {old}", lambda: True if query(old, f"SELECT 1 FROM pg_replication_slots "
                                               f"WHERE slot_name = '{SLOT}'") else None)
log(f"PostgreSQL {version}; leader {old}; slot {SLOT} created")
consumer = Consumer(); consumer.start()
writer = Writer(); writer.start()
wait_written(writer, BATCH)
t_ready = time.monotonic()
replicas = [n for n in names if n != old]
first = {}
def copy_advanced(r):
    rows = query(r, f"SELECT confirmed_flush_lsn - '0/0' FROM pg_replication_slots WHERE slot_name = '{SLOT}'")
    if not rows or rows[0][0] is None: return None
    first.setdefault(r, rows[0][0])
    return True if rows[0][0] > first[r] else None
for r in replicas:
    wait(f"{r}'s copy of {SLOT} advanced", lambda: copy_advanced(r))
cols = "slot_name, slot_type, confirmed_flush_lsn" + (", failover, synced" if major >= 17 else "")
slot_rows = {r: query(r, f"SELECT {cols} FROM pg_replication_slots WHERE slot_type = 'logical'") for r in replicas}
slot_rows[old] = query(old, f"SELECT {cols} FROM pg_replication_slots WHERE slot_type = 'logical'")
log(f"copies advanced on {', '.join(replicas)} {time.monotonic() - t_ready:.1f} s after the consumer started; "
    f"{len(writer.acked)} written; logical slots ({cols}): {slot_rows}")

# kill -9 of the leader's Patroni and postmaster at once (KILL_DELAY seconds after the copies moved).
time.sleep(float(os.environ.get("KILL_DELAY", "0")))
old_launcher = launcher_pids[names.index(old)]
victims = [patroni_pid(old_launcher), int(open(f"{work}/{old}/data/postmaster.pid").readline())]
t0 = time.monotonic()
for p in victims: os.kill(p, signal.SIGKILL)
log(f"SIGKILL to {old}'s Patroni and postmaster {victims}")
def new_writable():
    n = leader(skip=(old,))
    return n if n and n != old and writable(n) else None
new = wait("a new writable leader", new_writable)
t_writable = time.monotonic() - t0
def resumed():
    return True if consumer.node == new and query(new, f"SELECT active FROM pg_replication_slots "
                                                       f"WHERE slot_name = '{SLOT}'")[0][0] else None
wait(f"the consumer on {new}", resumed)
t_resumed = time.monotonic() - t0
log(f"new leader {new} writable {t_writable:.1f} s, consumer resumed {t_resumed:.1f} s after the kill "
    f"(pg_recvlogical run {consumer.starts})")

# The killed node rejoins.
yml = f"{work}/{old}/patroni.yml"
with open(f"{work}/{old}/patroni.log", "a") as lf:
    p = subprocess.Popen(as_postgres + [os.path.join(os.path.dirname(sys.executable), "patroni"), yml],
                         stdout=lf, stderr=lf, stdin=subprocess.DEVNULL)
extra_pids.write(f"{p.pid}\n"); extra_pids.flush()
t1 = time.monotonic()
def rejoined():
    c = cluster(skip=(old,))
    m = next((m for m in c["members"] if m["name"] == old), None) if c else None
    return True if m and m.get("state") == "streaming" else None
wait(f"{old} streaming again", rejoined)
log(f"{old} streams again {time.monotonic() - t1:.1f} s after its Patroni restarted")

wait_written(writer, BATCH)
writer.stop.set(); writer.join(timeout=10)
acked = list(writer.acked)
final = wait("a leader at the end", lambda: leader())
on_final = {r[0] for r in query(final, f"SELECT id FROM {TABLE}")}
expected = [i for i in acked if i in on_final]
try:
    wait("the consumer to receive every change",
         lambda: True if all(i in consumer.received() for i in expected) else None, limit=120)
except SystemExit as e:
    log(str(e))
received = consumer.finish()
ack = set(acked)
written = len(ack)
not_on_final = sum(1 for i in ack if i not in on_final)
lost = sum(1 for i in ack if i in on_final and i not in received)
twice = sum(1 for n in received.values() if n > 1)
phantoms = sum(1 for i in received if i not in on_final)
again = sorted(i for i, n in received.items() if n > 1)
if again:
    span = f"acknowledged {t0 - writer.at[again[0]]:.1f} s to {t0 - writer.at[again[-1]]:.1f} s before the kill"
    log(f"redelivered ids {again[0]}..{again[-1]}, {span}")
before = [i for i in acked if t0 - 5 <= writer.at[i] < t0]
log(f"writer rate in the 5 s before the kill: {len(before) / 5:.0f} per second")
after = {n: query(n, f"SELECT {cols} FROM pg_replication_slots WHERE slot_type = 'logical'") for n in names}
log(f"final leader {final}; logical slots at the end ({cols}): {after}; writer's last error: {writer.error}")
print(f"| {version} | {run} | {written} | {len(received)} | {lost} | {twice} | {phantoms} | {not_on_final} "
      f"| {t_writable:.1f} / {t_resumed:.1f} |", flush=True)
PY
  ROWS+=("$(tail -1 "$DIR/scenario.out")")
  echo "${ROWS[-1]}" >&2
  cleanup
  trap - EXIT
}

cleanup() {
  local p f
  [ -n "${DIR:-}" ] && [ -d "$DIR" ] || return 0
  if [ -f "$DIR/extra.pids" ]; then while read -r p; do PIDS+=("$p"); done <"$DIR/extra.pids"; fi
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for _ in $(seq 1 30); do
    alive=0; for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break; sleep 1
  done
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  for f in "$DIR"/p*/data/postmaster.pid; do [ -f "$f" ] && kill -9 "$(head -1 "$f")" 2>/dev/null || true; done
  if [ -n "${KEEP_LOGS:-}" ]; then
    mkdir -p "$KEEP_LOGS/$(basename "$DIR")"
    cp "$DIR"/*.out "$DIR"/*.log "$DIR"/recv-*.txt "$KEEP_LOGS/$(basename "$DIR")/" 2>/dev/null || true
    for f in "$DIR"/p*/patroni.log; do cp "$f" "$KEEP_LOGS/$(basename "$DIR")/$(basename "$(dirname "$f")").log"; done
  fi
  rm -rf "$DIR"
  DIR=
}

for r in $(seq 1 "$RUNS"); do one_run "$r"; done
echo
echo "| PostgreSQL | run | written (acknowledged) | received | lost | redelivered | phantoms | acknowledged, not on the new primary | new primary writable / consumer resumed (s after the kill) |"
echo "|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
