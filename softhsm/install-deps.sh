#!/usr/bin/env bash
# Install the system packages tokencsp needs for its tests and demo:
#   softhsm2 (and openssl, if missing) when softhsm2-util is missing,
#   python3-venv when `python3 -m venv` does not work (Debian splits it out),
#   gnutls-bin when p11tool is missing (tests/test_p11tool.py reads the token with it),
#   p11-kit-modules when p11-kit-proxy.so is missing (tests/test_p11kit.py loads the proxy),
#   groff-base and zsh when missing (tests/test_packaging.py: the man page, the zsh completion).
# Does nothing when everything is present. Uses sudo when not root.
# Only apt-get (Debian/Ubuntu) is supported; elsewhere it says what is missing.
#
# Usage: softhsm/install-deps.sh      (env PYTHON selects the interpreter, default python3)
set -euo pipefail

PYTHON=${PYTHON:-python3}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    else
        sudo "$@"
    fi
}

venv_works() {
    # `-m venv --help` succeeds even without ensurepip, so build a throwaway
    # venv for real: that is the step Debian's split breaks.
    local probe rc=0
    probe=$(mktemp -d)
    "$PYTHON" -m venv "$probe/v" >/dev/null 2>&1 || rc=1
    rm -rf "$probe"
    return $rc
}

packages=()
if ! command -v softhsm2-util >/dev/null 2>&1; then
    packages+=(softhsm2)
    command -v openssl >/dev/null 2>&1 || packages+=(openssl)
fi
command -v p11tool >/dev/null 2>&1 || packages+=(gnutls-bin)
# tests/test_p11kit.py: SoftHSM through p11-kit's proxy module (Debian: p11-kit-modules)
compgen -G '/usr/lib/*/p11-kit-proxy.so' >/dev/null || [ -e /usr/lib/p11-kit-proxy.so ] || packages+=(p11-kit-modules)
# tests/test_packaging.py: the man page is rendered with groff, the zsh completion run in zsh
command -v groff >/dev/null 2>&1 || packages+=(groff-base)
command -v zsh >/dev/null 2>&1 || packages+=(zsh)
need_venv=0
if ! venv_works; then
    need_venv=1
    packages+=(python3-venv)
fi

[ ${#packages[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-deps: missing ${packages[*]} and apt-get is not available; install them by hand" >&2
    exit 1
fi
if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null 2>&1; then
    echo "install-deps: missing ${packages[*]}; not root and sudo not found" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
echo "install-deps: installing ${packages[*]}" >&2
as_root apt-get update -qq
if [ $need_venv -eq 1 ]; then
    # Debian/Ubuntu also ship a per-version package (python3.11-venv) that the
    # interpreter in use may need; add it when apt knows it.
    pyver=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)
    if [ -n "$pyver" ] && apt-cache show "python${pyver}-venv" >/dev/null 2>&1; then
        packages+=("python${pyver}-venv")
    fi
fi
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null

if ! command -v softhsm2-util >/dev/null 2>&1; then
    echo "install-deps: softhsm2-util still not found after installing ${packages[*]}" >&2
    exit 1
fi
if [ $need_venv -eq 1 ] && ! venv_works; then
    echo "install-deps: '$PYTHON -m venv' still fails after installing ${packages[*]}" >&2
    exit 1
fi
