#!/usr/bin/env bash
# Sets up the machine (scripts/setup.sh), builds Keel and runs `keel demo`: a local etcd and three Keel nodes on
# loopback, until Ctrl-C. Extra arguments go to `keel demo` (e.g. --failover).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --quiet --bin keel
exec target/debug/keel demo "$@"
