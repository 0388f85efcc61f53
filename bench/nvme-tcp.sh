#!/usr/bin/env bash
# NVMe/TCP block service benchmark on loopback with a RAM volume.
#
# Starts its own appliance (`baton serve`, 2 controllers, RAM volume) and a raw TCP source
# process, and prints, from one run:
#   - 4 KiB random read/write IOPS at queue depth 32 (one job per controller),
#   - 128 KiB sequential read/write MB/s at queue depth 8, and the sequential read as a
#     ratio of a raw TCP stream between two processes over the same loopback, with every
#     controller and job, and again with one controller and one job (each side about a
#     core, as in a comparison with SPDK's target).
# Usage: bench/nvme-tcp.sh [seconds per workload]   (environment: BATON_BENCH_ARGS)
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-5}"
cargo build --release -q -p baton
bin=target/release/baton
echo "== $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores, $(uname -r)"
# shellcheck disable=SC2086
"$bin" bench --seconds "$secs" --qd 32 --workload randread4k,randwrite4k --no-reference ${BATON_BENCH_ARGS:-}
# shellcheck disable=SC2086
"$bin" bench --seconds "$secs" --qd 8 --workload seqread128k,seqwrite128k ${BATON_BENCH_ARGS:-}
# shellcheck disable=SC2086
"$bin" bench --seconds "$secs" --qd 8 --workload seqread128k --digests ${BATON_BENCH_ARGS:-}
# shellcheck disable=SC2086
"$bin" bench --seconds "$secs" --qd 8 --workload seqread128k --controllers 1 --jobs 1 ${BATON_BENCH_ARGS:-}
