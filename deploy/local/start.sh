#!/usr/bin/env bash
# Start a local Kafka-protocol broker (Tansu, memory-only) and Redis for development and demos.
#
#   deploy/local/start.sh            # broker on 127.0.0.1:9092, Redis on 127.0.0.1:6379
#   SEVO_KAFKA_PORT=19092 SEVO_REDIS_PORT=16379 deploy/local/start.sh
#
# Environment:
#   SEVO_KAFKA_PORT   broker port (default 9092); SEVO_NO_KAFKA=1 skips the broker
#   SEVO_REDIS_PORT   Redis port (default 6379);  SEVO_NO_REDIS=1 skips Redis
#   SEVO_REDIS_AOF=1  keep a Redis append-only file in the state dir (survives restarts)
#   SEVO_HOST         listen address (default 127.0.0.1)
#   SEVO_STATE_DIR    pid/state files, logs and Redis data
#                     (default ${XDG_STATE_HOME:-~/.local/state}/sevo-engine/local)
#   SEVO_PYTHON       interpreter with the project installed (default .venv/bin/python)
#
# The broker keeps everything in memory: stopping it loses all topics and offsets.
# Stop with deploy/local/stop.sh; see what runs with deploy/local/status.sh.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
py="${SEVO_PYTHON:-$root/.venv/bin/python}"
state="${SEVO_STATE_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/sevo-engine/local}"
args=(start --state-dir "$state"
      --host "${SEVO_HOST:-127.0.0.1}"
      --kafka-port "${SEVO_KAFKA_PORT:-9092}"
      --redis-port "${SEVO_REDIS_PORT:-6379}")
[[ "${SEVO_NO_KAFKA:-0}" == 1 ]] && args+=(--no-kafka)
[[ "${SEVO_NO_REDIS:-0}" == 1 ]] && args+=(--no-redis)
[[ "${SEVO_REDIS_AOF:-0}" == 1 ]] && args+=(--redis-appendonly)
cd "$root"
exec "$py" -m devtools.services "${args[@]}"
