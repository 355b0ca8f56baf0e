#!/usr/bin/env bash
# Stop the services started by deploy/local/start.sh (same SEVO_STATE_DIR).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
py="${SEVO_PYTHON:-$root/.venv/bin/python}"
state="${SEVO_STATE_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/sevo-engine/local}"
cd "$root"
exec "$py" -m devtools.services stop --state-dir "$state"
