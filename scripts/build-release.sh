#!/usr/bin/env bash
# Builds the release binaries and copies them to a dist folder. The Dockerfile's
# builder stage runs this script, and CI can run it as is, so both exercise the
# same commands.
# Usage: scripts/build-release.sh [DIST_DIR]   (default: dist)
set -euo pipefail
cd "$(dirname "$0")/.."
dist="${1:-dist}"
target="${CARGO_TARGET_DIR:-target}"
cargo build --release --locked -p cutover-proxy -p cutover-cli -p cutover-load
mkdir -p "$dist"
for bin in cutover-proxy cutover cutover-load; do
  install -m 0755 "$target/release/$bin" "$dist/$bin"
done
echo "build-release: $(ls "$dist" | tr '\n' ' ')in $dist"
