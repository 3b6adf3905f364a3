#!/usr/bin/env bash
# The whole test suite, on a fresh machine: makes .venv, installs threadline with its test
# extra into it, installs PostgreSQL, Chromium and Node.js if they are missing, and runs pytest.
# Extra arguments go to pytest (e.g. `bash tests/run.sh -x`).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "tests/run.sh: creating .venv with $($python --version)"
    "$python" -m venv .venv
fi
echo "tests/run.sh: installing threadline[test] into .venv"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'

# Debian packages the tests need, installed when missing:
# - PostgreSQL: the tests start a throwaway cluster of their own (tests/pg.py) on a free
#   loopback port, as an unprivileged user; they need the server binaries, never a running server.
# - Chromium and its driver: tests/browser drives the chat page in headless Chromium (selenium).
# - Node.js: tests/node runs the JavaScript client under Node (a WebSocket needs Node >= 20.10).
missing=()
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
    missing+=(postgresql)
fi
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        # Only these packages and what they depend on: no recommends, nothing already
        # installed upgraded (--no-upgrade), no `apt-get upgrade`.
        echo "tests/run.sh: installing ${missing[*]} from Debian packages" \
             "(apt-get install --no-install-recommends --no-upgrade)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q --no-install-recommends --no-upgrade "${missing[@]}"
    else
        echo "tests/run.sh: missing ${missing[*]} and I am not root: install them, e.g." \
             "sudo apt-get install --no-install-recommends ${missing[*]}, then run me again" >&2
        exit 1
    fi
fi

exec .venv/bin/python -m pytest "$@"
