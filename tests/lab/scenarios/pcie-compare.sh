# Benchmark: Baton serving an nvme-pcie volume (namespace 2 of the emulated subsystem through
# PCIe controller A with the user-space driver) against the kernel's nvmet-tcp serving the
# same namespace through the kernel's nvme driver on PCIe controller B, in the same guest,
# both over NVMe/TCP on loopback with the same fio jobs, taking turns for several rounds.
# Prints LAB-RESULT lines; no pass/fail on numbers.
. /lab/lib.sh
set -- $(for d in /sys/bus/pci/devices/*; do [ "$(cat "$d/class")" = 0x010802 ] && basename "$d"; done)
A=$1
K=nqn.2026-11.io.baton:nvmet-pcie
BP=nqn.2019-08.org.qemu:baton-backplane
SECS=${LAB_COMPARE_SECONDS:-4}
ROUNDS=${LAB_COMPARE_ROUNDS:-3}
cat > /tmp/pcie-compare.yaml <<YAML
data_dir: /data
controllers: {count: 1, pin: false}
nvme_tcp: {address: 127.0.0.1, base_port: 4420, discovery_port: null}
admin: {address: "127.0.0.1:9440"}
devices: [{name: bp, kind: nvme-pcie, controllers: ["$A"], nsid: 2, queue_depth: 128}]
volumes: [{name: v0, devices: [bp], block_size: 512}]
subsystems: [{nqn: $NQN, allow_any_host: true, namespaces: [{nsid: 1, volume: v0}]}]
logging: {level: warn}
YAML
check setup-pci-a baton setup-pci "$A" --hugepages 128
check kernel-namespace-via-b wait_for 20 kernel_ns $BP 2
kdev=$(kernel_ns $BP 2)
check baton-starts start_baton /tmp/pcie-compare.yaml || { tail -n 5 /tmp/baton.log; exit 1; }
check baton-connect nvme connect -t tcp -a 127.0.0.1 -s 4420 -n $NQN
check baton-namespace wait_for 10 ns_dev
check nvmet-configfs nvmet_export $K "/dev/$kdev" 9 4441
check nvmet-connect nvme connect -t tcp -a 127.0.0.1 -s 4441 -n $K
check nvmet-namespace wait_for 10 ns_dev $K
baton_dev=$(ns_dev)
nvmet_dev=$(ns_dev $K)
compare_rounds pcie-compare "$baton_dev" "$nvmet_dev"
check baton-disconnect nvme disconnect -n $NQN
check nvmet-disconnect nvme disconnect -n $K
check nvmet-teardown nvmet_unexport $K 9
check baton-stops stop_baton
check reset-pci baton setup-pci --reset "$A"
