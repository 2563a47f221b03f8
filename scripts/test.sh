#!/usr/bin/env bash
# Runs every test: installs what they need, then `cargo test`. Extra arguments go to cargo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HELM="${HELM:-$PWD/.tools/bin/helm}"
cargo test --all-targets "$@"
