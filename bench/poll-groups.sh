#!/usr/bin/env bash
# Poll groups: a host that reaches Baton through one port only (one path, as the Linux
# host's default NUMA I/O policy sends its I/O) should still use every controller thread.
# Baton runs 2 controllers (pinned to the two first cores) on a RAM volume; `baton bench`
# runs 2 jobs (2 host controllers, 1 I/O queue each) against port 1 alone, with
# `nvme_tcp.spread_queues` on and off, alternating for a few rounds. Prints IOPS / MB/s and
# the spread / not spread ratio per workload and round. Numbers only, no pass/fail.
# Usage: bench/poll-groups.sh [seconds] [rounds]   (environment: BATON=path to the binary)
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-5}"
rounds="${2:-3}"
if [ -z "${BATON:-}" ]; then
  cargo build --release -q -p baton
  BATON=target/release/baton
fi
dir="$(mktemp -d)"
pid=
stop() {
  if [ -n "$pid" ]; then
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    pid=
  fi
}
trap 'stop; rm -rf "$dir"' EXIT
port=$((20000 + RANDOM % 20000))

# start SPREAD: an appliance with nvme_tcp.spread_queues = SPREAD.
start() {
  cat > "$dir/baton.yaml" <<YAML
data_dir: $dir
controllers: {count: 2, pin: true}
nvme_tcp: {address: 127.0.0.1, base_port: $port, discovery_port: null, spread_queues: $1}
admin: {address: "127.0.0.1:$((port + 5))"}
devices:
  - {name: ram0, kind: ram, size: 512MiB}
volumes:
  - {name: vol0, devices: [ram0], block_size: 512}
subsystems:
  - {nqn: "nqn.2026-11.io.baton:vol0", allow_any_host: true, namespaces: [{nsid: 1, volume: vol0}]}
logging: {level: warn}
YAML
  "$BATON" serve --config "$dir/baton.yaml" > "$dir/baton.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do
    "$BATON" status --admin "127.0.0.1:$((port + 5))" > /dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "baton did not start" >&2
  cat "$dir/baton.log" >&2
  return 1
}

# measure: one line per workload, "label value" (IOPS for 4 KiB, MB/s for 128 KiB).
measure() {
  "$BATON" bench --target "127.0.0.1:$port" --jobs 2 --qd 32 --seconds "$secs" \
    --workload randread4k,seqread128k --no-reference 2>/dev/null |
    awk '/^randread 4KiB/ {print "randread4k", $3} /^seqread 128KiB/ {print "seqread128k", $4}'
}

printf '%-6s %-12s %14s %14s %7s\n' round workload spread one-thread ratio
for r in $(seq 1 "$rounds"); do
  start true
  measure > "$dir/on.txt"
  stop
  start false
  measure > "$dir/off.txt"
  stop
  join "$dir/on.txt" "$dir/off.txt" | while read -r w on off; do
    awk -v r="$r" -v w="$w" -v a="$on" -v b="$off" \
      'BEGIN { printf "%-6s %-12s %14s %14s %7.2f\n", r, w, a, b, (b > 0 ? a / b : 0) }'
  done
done
