#!/usr/bin/env bash
# The whole test suite, on a fresh machine: makes .venv, installs threadline with its test
# extra into it, and runs pytest. Extra arguments go to pytest (e.g. `bash tests/run.sh -x`).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "tests/run.sh: creating .venv with $($python --version)"
    "$python" -m venv .venv
fi
echo "tests/run.sh: installing threadline[test] into .venv"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'

exec .venv/bin/python -m pytest "$@"
