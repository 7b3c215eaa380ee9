#!/usr/bin/env bash
# Run a command next to a throwaway opencryptoki (pkcsslotd + three soft tokens)
# that nothing outside this run can see or keep:
#
#   sudo opencryptoki/run-in-namespace.sh .venv/bin/python -m pytest -q
#
# As root, in private mount, IPC and PID namespaces (unshare), it bind-mounts a
# fresh copy of /etc/opencryptoki (with our opencryptoki.conf) and of
# /var/lib/opencryptoki (the token stores) from a temp dir, puts a tmpfs on
# /run (pkcsslotd's socket and pid file, /run/lock/opencryptoki) and on
# /dev/shm (the tokens' shared memory), starts pkcsslotd and runs the command.
# When the command ends the PID namespace ends with it (pkcsslotd is killed),
# the mounts vanish and the temp dir is removed: the host's opencryptoki
# config, tokens, daemon and shared memory are never touched.
#
# The tokens are blank (uninitialised). tokencsp.testing.OpencryptokiKit
# initialises them over PKCS#11 (`tokencsp token init`: C_InitToken with the
# fresh SO PIN 87654321, then C_InitPIN), so no PIN is ever on a command line,
# and it refuses to run unless the store is this script's (TOKENCSP_OCK_SANDBOX).
#
# Slots (opencryptoki has a fixed slot table, one soft token per stdll):
#   0  libpkcs11_sw.so, token dir /var/lib/opencryptoki/swtok
#   1  a private copy of libpkcs11_sw.so, tokname swtok-b (its own token dir,
#      lock dir and shared memory). The copy is needed because the soft stdll
#      keeps its store path in a global: two slots on one dlopen()ed library
#      would share it. The library is linked -Bsymbolic, so the copy's globals
#      are its own.
#   2  another copy, tokname swtok-c: the pytest plugin's pkcs11_token
#      (tcsp-pool-ock), which no other fixture uses.
#
# Installs the `opencryptoki` package (apt) when pkcsslotd is missing.
# Environment inside: TOKENCSP_OCK_SANDBOX (the temp dir), TOKENCSP_OCK_MODULE
# (libopencryptoki.so), TOKENCSP_TEST_BACKEND=opencryptoki.
set -euo pipefail

die() { echo "run-in-namespace.sh: error: $*" >&2; exit 1; }

find_lib() {  # first existing path among the arguments
    local p
    for p in "$@"; do [ -e "$p" ] && { printf '%s\n' "$p"; return 0; }; done
    return 1
}

module_path() {
    find_lib /usr/lib/x86_64-linux-gnu/pkcs11/libopencryptoki.so \
             /usr/lib/aarch64-linux-gnu/pkcs11/libopencryptoki.so \
             /usr/lib/s390x-linux-gnu/pkcs11/libopencryptoki.so \
             /usr/lib64/opencryptoki/libopencryptoki.so \
             /usr/lib/opencryptoki/libopencryptoki.so
}

sw_stdll_path() {
    find_lib /usr/lib/x86_64-linux-gnu/opencryptoki/stdll/libpkcs11_sw.so \
             /usr/lib/aarch64-linux-gnu/opencryptoki/stdll/libpkcs11_sw.so \
             /usr/lib/s390x-linux-gnu/opencryptoki/stdll/libpkcs11_sw.so \
             /usr/lib64/opencryptoki/stdll/libpkcs11_sw.so \
             /usr/lib/opencryptoki/stdll/libpkcs11_sw.so
}

outside() {
    [ $# -gt 0 ] || die "usage: $0 COMMAND [ARG...]"
    [ "$(id -u)" -eq 0 ] || die "must run as root (it makes mount/IPC/PID namespaces and runs pkcsslotd)"
    command -v unshare >/dev/null || die "unshare (util-linux) not found"
    if ! command -v pkcsslotd >/dev/null || ! module_path >/dev/null || ! sw_stdll_path >/dev/null; then
        command -v apt-get >/dev/null || die "opencryptoki is not installed and apt-get is missing; install opencryptoki"
        echo "run-in-namespace.sh: installing opencryptoki (apt)" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq opencryptoki >/dev/null
    fi
    getent group pkcs11 >/dev/null || die "group pkcs11 missing (the opencryptoki package creates it)"

    local rc=0
    sandbox=$(mktemp -d "${TMPDIR:-/tmp}/tokencsp-ock.XXXXXX")
    # Also on Ctrl-C. Nothing of the host is mounted below it (only from it), so this
    # removes only what this run made.
    trap 'rm -rf -- "$sandbox"' EXIT
    # --propagation private: none of our mounts leaks back to the host.
    unshare --mount --ipc --pid --fork --mount-proc --propagation private \
        bash "${BASH_SOURCE[0]}" --inside "$sandbox" "$@" || rc=$?
    return "$rc"
}

inside() {
    local dir=$1; shift
    local module stdll
    module=$(module_path) || die "libopencryptoki.so not found"
    stdll=$(sw_stdll_path) || die "libpkcs11_sw.so not found"

    mkdir -p "$dir/etc" "$dir/lib" "$dir/hostrun" "$dir/stdll"
    cp -a /etc/opencryptoki/. "$dir/etc/"
    cp -a /var/lib/opencryptoki/. "$dir/lib/"
    cp "$(readlink -f "$stdll")" "$dir/stdll/libpkcs11_sw_b.so"
    cp "$(readlink -f "$stdll")" "$dir/stdll/libpkcs11_sw_c.so"
    cat >"$dir/etc/opencryptoki.conf" <<CONF
# Written by tokencsp opencryptoki/run-in-namespace.sh for one test run.
version opencryptoki-3.1
slot 0
{
stdll = libpkcs11_sw.so
description = "tokencsp test soft token a"
}
slot 1
{
stdll = $dir/stdll/libpkcs11_sw_b.so
tokname = swtok-b
description = "tokencsp test soft token b"
}
slot 2
{
stdll = $dir/stdll/libpkcs11_sw_c.so
tokname = swtok-c
description = "tokencsp test soft token c"
}
CONF
    printf '%s\n' "$dir" >"$dir/lib/.tokencsp-sandbox"

    # -n: no /run/mount/utab bookkeeping (libmount would create it on the host's /run).
    mount -n --bind "$dir/etc" /etc/opencryptoki
    mount -n --bind "$dir/lib" /var/lib/opencryptoki
    # A private /run that still shows the host's service directories
    # (PostgreSQL's socket and the like); /run/lock is private and empty.
    mount -n --bind /run "$dir/hostrun"
    mount -n -t tmpfs -o mode=0755 tokencsp-ock-run /run
    local entry name
    for entry in "$dir/hostrun"/*; do
        name=${entry##*/}
        case $name in lock | shm | mount) continue ;; esac
        if [ -d "$entry" ] && [ ! -L "$entry" ]; then
            mkdir -p "/run/$name"
            mount -n --bind "$entry" "/run/$name"
        fi
    done
    ln -s /dev/shm /run/shm
    mkdir -m 1777 /run/lock
    install -d -m 0770 -g pkcs11 /run/lock/opencryptoki /run/lock/opencryptoki/swtok /run/lock/opencryptoki/swtok-b \
        /run/lock/opencryptoki/swtok-c
    mount -n -t tmpfs -o mode=1777 tokencsp-ock-shm /dev/shm
    umount -n "$dir/hostrun"

    pkcsslotd
    local i
    for i in $(seq 50); do [ -S /run/pkcsslotd.socket ] && break; sleep 0.1; done
    [ -S /run/pkcsslotd.socket ] || die "pkcsslotd did not start (no /run/pkcsslotd.socket)"

    export TOKENCSP_OCK_SANDBOX="$dir" TOKENCSP_OCK_MODULE="$module" TOKENCSP_TEST_BACKEND=opencryptoki
    # Not exec: this shell is the namespace's PID 1 and stays to stop pkcsslotd.
    local rc=0
    "$@" || rc=$?
    kill "$(cat /run/pkcsslotd.pid)" 2>/dev/null || true
    return "$rc"
}

if [ "${1:-}" = "--inside" ]; then
    shift
    inside "$@"
else
    outside "$@"
fi
