#!/usr/bin/env bash
# Runs every test: installs what they need, then `cargo test`. Extra arguments go to cargo's
# test run. The benchmarks run first as quick smoke runs, so the test summary comes last.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HELM="${HELM:-$PWD/.tools/bin/helm}"
cargo test --bench scale --bench token_manager
cargo test --lib --bins --tests "$@"
