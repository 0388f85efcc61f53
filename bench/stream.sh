#!/usr/bin/env bash
# Stream service benchmark (one run, references measured in the same run):
#   1. one unpaced stream from a RAM volume vs a raw loopback TCP stream between two processes,
#   2. device reads capped per controller: throughput with 1, 2 and 4 controllers,
#   3. many paced streams: completed sessions, deadline misses, appliance memory per stream.
# Usage: bench/stream.sh [streams] [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p baton
echo "== $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores, $(uname -r)"
target/release/baton bench-stream --streams "${1:-1000}" --seconds "${2:-6}"
