#!/usr/bin/env bash
# Create a project-local SoftHSM2 token store and the tokencsp dev token(s).
#
# Usage: softhsm/setup-token.sh [STATE_DIR]        (default: <repo>/.softhsm)
#
#   TOKENCSP_TOKEN         label of the token          (default tokencsp-dev)
#   TOKENCSP_PIN           its user PIN                (default 1234)
#   TOKENCSP_SO_PIN        its SO PIN                  (default 12345678)
#   TOKENCSP_EXTRA_TOKENS  more labels, space separated, same PINs
#   TOKENCSP_PYTHON        the Python with tokencsp installed (default <repo>/.venv/bin/python)
#
# Writes STATE_DIR/softhsm2.conf, STATE_DIR/tokens/ and STATE_DIR/env; the
# env file sets SOFTHSM2_CONF, TOKENCSP_MODULE and TOKENCSP_TOKEN, never the
# PIN, and puts the venv's bin directory (the tokencsp command) on PATH. Idempotent: a token whose label already exists is left alone. The
# system token directory is never used. PINs are never printed.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
state=${1:-$repo/.softhsm}
mkdir -p "$state/tokens"
state=$(cd "$state" && pwd)

python=${TOKENCSP_PYTHON:-$repo/.venv/bin/python}
label=${TOKENCSP_TOKEN:-tokencsp-dev}
pin=${TOKENCSP_PIN:-1234}
so_pin=${TOKENCSP_SO_PIN:-12345678}
read -r -a extra <<<"${TOKENCSP_EXTRA_TOKENS:-}"
labels=("$label" "${extra[@]}")

die() { echo "setup-token: $*" >&2; exit 1; }

command -v softhsm2-util >/dev/null 2>&1 \
    || die "softhsm2-util not found; run softhsm/install-deps.sh (or 'make token')"

module=
for candidate in \
    /usr/lib/softhsm/libsofthsm2.so \
    /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so \
    /usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so \
    /usr/local/lib/softhsm/libsofthsm2.so \
    /usr/lib64/pkcs11/libsofthsm2.so \
    /usr/lib64/softhsm/libsofthsm2.so \
    /opt/homebrew/lib/softhsm/libsofthsm2.so; do
    if [ -f "$candidate" ]; then module=$candidate; break; fi
done
[ -n "$module" ] || die "libsofthsm2.so not found; run softhsm/install-deps.sh"
"$python" -c 'import tokencsp' 2>/dev/null || die "$python cannot import tokencsp; run 'make token'"

for l in "${labels[@]}"; do
    # PKCS#11 token labels are 32 bytes, space padded.
    [ -n "$l" ] && [ "$(printf %s "$l" | wc -c)" -le 32 ] \
        || die "token label '$l' must be 1 to 32 bytes"
done
[ ${#pin} -ge 4 ] || die "TOKENCSP_PIN must be at least 4 characters"
[ ${#so_pin} -ge 4 ] || die "TOKENCSP_SO_PIN must be at least 4 characters"

conf=$state/softhsm2.conf
# '|' as sed delimiter; a path holding '|', '&' or '\' is not supported.
case $state in *'|'* | *'&'* | *'\'*) die "state dir path must not contain | & or \\" ;; esac
tmp_conf=$(mktemp "$state/.softhsm2.conf.XXXXXX")
sed "s|@TOKENDIR@|$state/tokens|g" "$here/softhsm2.conf.in" >"$tmp_conf"
mv -f "$tmp_conf" "$conf"
export SOFTHSM2_CONF=$conf

existing_labels() {
    # "Label:" lines of --show-slots, with the 32-byte space padding removed.
    softhsm2-util --show-slots 2>/dev/null \
        | sed -n 's/^[[:space:]]*Label:[[:space:]]*//p' \
        | sed 's/[[:space:]]*$//'
}

created=()
present=()
for l in "${labels[@]}"; do
    if existing_labels | grep -Fxq -- "$l"; then
        present+=("$l")
        continue
    fi
    # tokencsp hands the PINs to the module from its environment: no PIN is
    # ever on a command line (softhsm2-util --init-token would need them there).
    if ! out=$(SOFTHSM2_CONF=$conf TOKENCSP_MODULE=$module TOKENCSP_SO_PIN=$so_pin TOKENCSP_PIN=$pin \
            "$python" -m tokencsp token init --label "$l" </dev/null 2>&1); then
        die "initialising token '$l' failed: $out"
    fi
    created+=("$l")
done

env_file=$state/env
tmp_env=$(mktemp "$state/.env.XXXXXX")
{
    echo "# Written by softhsm/setup-token.sh; source it: . $env_file"
    echo "# The user PIN is not stored here: set TOKENCSP_PIN yourself."
    printf 'export SOFTHSM2_CONF=%q\n' "$conf"
    printf 'export TOKENCSP_MODULE=%q\n' "$module"
    printf 'export TOKENCSP_TOKEN=%q\n' "$label"
    # The venv's bin directory, so that `tokencsp` runs without activating the venv.
    bin=$(dirname "$python")
    if [ -x "$bin/tokencsp" ]; then
        printf 'export PATH=%q:"$PATH"\n' "$bin"
    fi
} >"$tmp_env"
mv -f "$tmp_env" "$env_file"

summary="setup-token: store $state/tokens"
[ ${#created[@]} -gt 0 ] && summary+="; created ${created[*]}"
[ ${#present[@]} -gt 0 ] && summary+="; already present ${present[*]}"
echo "$summary; env in $env_file (module $module)"
