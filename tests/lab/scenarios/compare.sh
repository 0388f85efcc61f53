# Benchmark: the same fio jobs against Baton and against the kernel's nvmet-tcp, both serving
# the same file on the guest's RAM-backed /data, both connected at once. The targets take
# turns job by job for several rounds, so a busy build host slows both alike; each target's
# best round is reported. Prints LAB-RESULT lines; no pass/fail on numbers.
. /lab/lib.sh
K=nqn.2026-11.io.baton:nvmet
truncate -s 256M /data/compare.img
dd if=/dev/urandom of=/data/compare.img bs=1M count=64 conv=notrunc 2>/dev/null
cat > /tmp/compare.yaml <<YAML
data_dir: /data
controllers: {count: 1, pin: false}
nvme_tcp: {address: 127.0.0.1, base_port: 4420, discovery_port: null}
admin: {address: "127.0.0.1:9440"}
devices: [{name: c0, kind: file, path: compare.img}]
volumes: [{name: v0, devices: [c0], block_size: 512}]
subsystems: [{nqn: $NQN, allow_any_host: true, namespaces: [{nsid: 1, volume: v0}]}]
logging: {level: warn}
YAML
SECS=${LAB_COMPARE_SECONDS:-4}
ROUNDS=${LAB_COMPARE_ROUNDS:-3}
check baton-starts start_baton /tmp/compare.yaml || exit 1
check baton-connect nvme connect -t tcp -a 127.0.0.1 -s 4420 -n $NQN
check baton-namespace wait_for 10 ns_dev
check nvmet-configfs nvmet_export $K /data/compare.img 8 4440
check nvmet-connect nvme connect -t tcp -a 127.0.0.1 -s 4440 -n $K
check nvmet-namespace wait_for 10 ns_dev $K
baton_dev=$(ns_dev)
nvmet_dev=$(ns_dev $K)
compare_rounds compare "$baton_dev" "$nvmet_dev"
check baton-disconnect nvme disconnect -n $NQN
check nvmet-disconnect nvme disconnect -n $K
check nvmet-teardown nvmet_unexport $K 8
check baton-stops stop_baton
