# Sourced by scripts/demo and scripts/test: make .venv with the project installed.
# Works on a fresh Debian with Python 3.11; installs python3-venv with apt when missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if [ ! -x .venv/bin/python ]; then
    if ! "$PYTHON" -m venv --help >/dev/null 2>&1 || ! "$PYTHON" -c "import ensurepip" 2>/dev/null; then
        as_root apt-get update -qq
        as_root apt-get install -y -qq python3-venv >/dev/null
    fi
    "$PYTHON" -m venv .venv
fi
if [ "${NEEDS_REDIS:-0}" = 1 ] && ! command -v redis-server >/dev/null 2>&1; then
    as_root apt-get update -qq
    as_root apt-get install -y -qq redis-server >/dev/null
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[${EXTRAS:-dev}]"
