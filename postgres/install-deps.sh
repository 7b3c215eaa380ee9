#!/usr/bin/env bash
# Install the PostgreSQL server the replay-cache tests start for themselves
# (tests/pg_server.py runs initdb into a temp dir; nothing system-wide is
# configured or started). Does nothing when initdb and pg_ctl are found.
# Uses sudo when not root; only apt-get (Debian/Ubuntu) is supported.
#
# Usage: postgres/install-deps.sh
set -euo pipefail

have_server() {
    command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1 && return 0
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}

have_server && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-deps: PostgreSQL (initdb, pg_ctl) is missing and apt-get is not available; install it by hand" >&2
    exit 1
fi
as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}
if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null 2>&1; then
    echo "install-deps: PostgreSQL is missing; not root and sudo not found" >&2
    exit 1
fi
echo "install-deps: installing postgresql" >&2
as_root apt-get update -qq
# The Debian package creates the unprivileged 'postgres' user the tests run
# initdb as when they are root. Its own cluster is not used by the tests.
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null

if ! have_server; then
    echo "install-deps: initdb still not found after installing postgresql" >&2
    exit 1
fi
