# Poll groups with the real Linux host: Baton runs 2 controllers, the host connects through
# port 4420 only (one path, 2 I/O queues: one per guest CPU) and fio reads with one job per
# CPU. With nvme_tcp.spread_queues on, the association's two I/O queues must be served by
# both controller threads (each thread's CPU time is read from /proc); with it off, by the
# port's own thread alone. fio verify over the spread queues checks the data. IOPS of both
# runs are printed; no pass/fail on numbers.
. /lab/lib.sh
truncate -s 256M /data/pg.img
SECS=${LAB_PG_SECONDS:-5}

config() {
  cat > /tmp/pg.yaml <<YAML
data_dir: /data
controllers: {count: 2, pin: false}
nvme_tcp: {address: 127.0.0.1, base_port: 4420, discovery_port: null, spread_queues: $1}
admin: {address: "127.0.0.1:9440"}
devices: [{name: pg, kind: file, path: pg.img}]
volumes: [{name: v0, devices: [pg], block_size: 512}]
subsystems: [{nqn: $NQN, allow_any_host: true, namespaces: [{nsid: 1, volume: v0}]}]
logging: {level: warn}
YAML
}

# CPU ticks (user + system) of Baton's controller thread baton-ctrl-$1.
ctrl_ticks() {
  for t in /proc/"$BATON_PID"/task/*; do
    [ "$(cat "$t/comm" 2>/dev/null)" = "baton-ctrl-$1" ] || continue
    awk '{print $14 + $15}' "$t/stat"
    return 0
  done
  echo 0
}

# one_path SPREAD: connects one path, runs fio, records IOPS and controller 1's share of
# the two controller threads' CPU time in /tmp/pg-SPREAD.txt.
one_path() {
  config "$1"
  start_baton /tmp/pg.yaml || return 1
  nvme connect -t tcp -a 127.0.0.1 -s 4420 -n "$NQN" || return 1
  wait_for 10 ns_dev || return 1
  dev=$(ns_dev)
  a0=$(ctrl_ticks 0)
  a1=$(ctrl_ticks 1)
  fio --eta=never --name=pg --filename="/dev/$dev" --ioengine=libaio --direct=1 \
    --rw=randread --bs=4k --iodepth=32 --numjobs=2 --cpus_allowed=0,1 \
    --cpus_allowed_policy=split --group_reporting --size=64M --time_based \
    --runtime="$SECS" --minimal > /tmp/pg-fio-"$1".txt 2>&1 || return 1
  b0=$(ctrl_ticks 0)
  b1=$(ctrl_ticks 1)
  iops=$(awk -F';' 'NF > 8 {print $8}' /tmp/pg-fio-"$1".txt)
  awk -v a0="$a0" -v a1="$a1" -v b0="$b0" -v b1="$b1" -v i="$iops" \
    'BEGIN { d0 = b0 - a0; d1 = b1 - a1; printf "%d %.2f %d %d\n", i, (d0 + d1 > 0 ? d1 / (d0 + d1) : 0), d0, d1 }' \
    > /tmp/pg-"$1".txt
  cat /tmp/pg-"$1".txt
}

# Controller 1's share of the work: about half when spread; with spreading off it only runs
# its reactor's heartbeat (under TCG that is a few percent).
spread_share() { awk '{exit !($2 >= 0.25 && $2 <= 0.75)}' /tmp/pg-true.txt; }
alone_share() { awk '{exit !($2 < 0.2)}' /tmp/pg-false.txt; }

check spread-run one_path true
check spread-both-threads-serve spread_share
check spread-fio-verify fio_verify pg "$(ns_dev)" 4k --cpus_allowed=0,1 --cpus_allowed_policy=split
check spread-disconnect nvme disconnect -n "$NQN"
check spread-stops stop_baton
check alone-run one_path false
check alone-one-thread-serves alone_share
check alone-disconnect nvme disconnect -n "$NQN"
check alone-stops stop_baton
read -r si ss s0 s1 < /tmp/pg-true.txt
read -r ai as a0 a1 < /tmp/pg-false.txt
echo "LAB-RESULT poll-groups spread iops=$si ctrl1_share=$ss ticks=$s0/$s1"
echo "LAB-RESULT poll-groups one-thread iops=$ai ctrl1_share=$as ticks=$a0/$a1"
awk -v a="$si" -v b="$ai" 'BEGIN { if (b > 0) printf "LAB-RESULT poll-groups spread/one-thread=%.2f\n", a / b }'
