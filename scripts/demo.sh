#!/usr/bin/env bash
# Runs the whole loop on this machine: installs redis-server if missing, builds, and starts
# `amr-credential-operator demo` against the local Entra ID and AMR emulators.
# Arguments go to `demo`, for example: scripts/demo.sh --duration 60 --output-dir demo-output
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec cargo run --quiet -- demo "$@"
