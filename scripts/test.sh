#!/usr/bin/env bash
# The test command: installs what the suite needs (idempotent), then runs every test
# in the workspace. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo test --workspace --locked "$@"
