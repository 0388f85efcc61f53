#!/usr/bin/env bash
# A slow device must not slow its controller's other namespaces: one Baton controller
# serves a RAM namespace and a namespace on a RAM device capped at 1 MiB/s of reads
# (`read_rate`). 4 KiB random reads at QD 32 on the fast namespace are measured alone, then
# again while another host reads the slow namespace at QD 8; the second / first ratio is
# printed (1.0: the slow device costs the fast one nothing).
# Usage: bench/slow-device.sh [seconds]   (environment: BATON=path to the baton binary)
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-5}"
if [ -z "${BATON:-}" ]; then
  cargo build --release -q -p baton
  BATON=target/release/baton
fi
dir="$(mktemp -d)"
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$dir"
}
trap cleanup EXIT
port=$((20000 + RANDOM % 20000))
cat > "$dir/baton.yaml" <<YAML
data_dir: $dir
controllers: {count: 1, pin: false}
nvme_tcp: {address: 127.0.0.1, base_port: $port, discovery_port: null}
admin: {address: "127.0.0.1:$((port + 1))"}
devices:
  - {name: fast, kind: ram, size: 256MiB}
  - {name: slow, kind: ram, size: 256MiB, read_rate: 1MiB}
volumes:
  - {name: fast, devices: [fast], block_size: 512}
  - {name: slow, devices: [slow], block_size: 512}
subsystems:
  - {nqn: "nqn.2026-11.io.baton:fast", allow_any_host: true, namespaces: [{nsid: 1, volume: fast}]}
  - {nqn: "nqn.2026-11.io.baton:slow", allow_any_host: true, namespaces: [{nsid: 1, volume: slow}]}
logging: {level: warn}
YAML
"$BATON" serve --config "$dir/baton.yaml" > "$dir/baton.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
  "$BATON" status --admin "127.0.0.1:$((port + 1))" > /dev/null 2>&1 && break
  sleep 0.1
done
fast() {
  "$BATON" bench --target "127.0.0.1:$port" --nqn nqn.2026-11.io.baton:fast --workload randread4k \
    --qd 32 --seconds "$secs" --no-reference | awk '/^randread 4KiB/ {print $3; exit}'
}
alone=$(fast)
"$BATON" bench --target "127.0.0.1:$port" --nqn nqn.2026-11.io.baton:slow --workload randread4k \
  --qd 8 --seconds $((secs * 2 + 6)) --no-reference > "$dir/slow.txt" 2>&1 &
slow=$!
sleep 3
beside=$(fast)
wait "$slow" || true
slow_iops=$(awk '/^randread 4KiB/ {print $3; exit}' "$dir/slow.txt")
echo "fast namespace 4 KiB randread QD 32: alone ${alone} IOPS, beside a 1 MiB/s device being read ${beside} IOPS (slow namespace: ${slow_iops:-?} IOPS)"
awk -v a="$alone" -v b="$beside" 'BEGIN { printf "beside / alone: %.2f\n", (a > 0 ? b / a : 0) }'
