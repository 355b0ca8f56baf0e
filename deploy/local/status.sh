#!/usr/bin/env bash
# Show the services started by deploy/local/start.sh; exit 0 only if all are running.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
py="${SEVO_PYTHON:-$root/.venv/bin/python}"
state="${SEVO_STATE_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/sevo-engine/local}"
cd "$root"
exec "$py" -m devtools.services status --state-dir "$state" "$@"
