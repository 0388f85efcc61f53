# End to end: Baton serves a volume on the nvme-pcie backplane (each Baton controller through
# its own PCIe controller and the user-space driver) over NVMe/TCP; the kernel host's fio
# verify passes through it. Runs after `driver` (the functions are bound to vfio-pci).
. /lab/lib.sh
set -- $(for d in /sys/bus/pci/devices/*; do [ "$(cat "$d/class")" = 0x010802 ] && basename "$d"; done)
cat > /tmp/pcie.yaml <<YAML
data_dir: /data
controllers: {count: 2, pin: false}
nvme_tcp: {address: 127.0.0.1, base_port: 4420, discovery_port: 8009}
admin: {address: "127.0.0.1:9440"}
devices: [{name: bp, kind: nvme-pcie, controllers: ["$1", "$2"], nsid: 2}]
volumes: [{name: v0, devices: [bp], block_size: 512}]
subsystems: [{nqn: $NQN, allow_any_host: true, namespaces: [{nsid: 1, volume: v0}]}]
logging: {level: warn}
YAML
check setup-pci baton setup-pci "$1" "$2" --hugepages 128
check baton-starts start_baton /tmp/pcie.yaml || { tail -n 5 /tmp/baton.log; exit 1; }
check connect-all nvme connect-all -t tcp -a 127.0.0.1 -s 8009
check two-live-paths wait_for 15 paths_are 2
dev=$(ns_dev)
check fio-verify-4k fio_verify pcie-4k "$dev" 4k
check fio-verify-64k fio_verify pcie-64k "$dev" 64k
# Real queue depth end to end: 4 jobs at QD 32 with mixed sizes, verified.
check fio-verify-qd32-4jobs-mixed fio_verify pcie-mixed "$dev" 4k --numjobs=4 --bsrange=4k-128k \
  --size=8M --offset_increment=8M
check disconnect nvme disconnect -n $NQN
check baton-stops-cleanly stop_baton
check reset-pci baton setup-pci --reset "$1" "$2"
check back-to-nvme sh -c "[ \$(basename \$(readlink /sys/bus/pci/devices/$1/driver)) = nvme ]"
