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
C=/sys/kernel/config/nvmet
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
# The kernel's block device of namespace 2 of the backplane (through controller B).
kernel_ns2() {
  s=$(subsys_dir $BP) || return 1
  for n in "$s"/nvme*n*; do
    [ "$(cat "$n/nsid" 2>/dev/null)" = 2 ] && { basename "$n"; return 0; }
  done
  return 1
}
setup_nvmet() {
  mkdir $C/subsystems/$K && echo 1 > $C/subsystems/$K/attr_allow_any_host &&
  mkdir $C/subsystems/$K/namespaces/1 &&
  echo "/dev/$1" > $C/subsystems/$K/namespaces/1/device_path &&
  echo 1 > $C/subsystems/$K/namespaces/1/enable && mkdir $C/ports/9 &&
  echo 127.0.0.1 > $C/ports/9/addr_traddr && echo tcp > $C/ports/9/addr_trtype &&
  echo 4441 > $C/ports/9/addr_trsvcid && echo ipv4 > $C/ports/9/addr_adrfam &&
  ln -s $C/subsystems/$K $C/ports/9/subsystems/$K
}
teardown_nvmet() {
  rm $C/ports/9/subsystems/$K && rmdir $C/ports/9 &&
  echo 0 > $C/subsystems/$K/namespaces/1/enable &&
  rmdir $C/subsystems/$K/namespaces/1 $C/subsystems/$K
}
check setup-pci-a baton setup-pci "$A" --hugepages 128
check kernel-namespace-via-b wait_for 20 kernel_ns2
kdev=$(kernel_ns2)
check baton-starts start_baton /tmp/pcie-compare.yaml || { tail -n 5 /tmp/baton.log; exit 1; }
check baton-connect nvme connect -t tcp -a 127.0.0.1 -s 4420 -n $NQN
check baton-namespace wait_for 10 ns_dev
check nvmet-configfs setup_nvmet "$kdev"
check nvmet-connect nvme connect -t tcp -a 127.0.0.1 -s 4441 -n $K
check nvmet-namespace wait_for 10 ns_dev $K
baton_dev=$(ns_dev)
nvmet_dev=$(ns_dev $K)
run_job() {
  case $1 in
    randread4k) args="--rw=randread --bs=4k --iodepth=32" ;;
    seqread128k) args="--rw=read --bs=128k --iodepth=8" ;;
  esac
  # shellcheck disable=SC2086
  fio --eta=never --name="$1" --filename="/dev/$3" --ioengine=libaio --direct=1 $args \
    --size=64M --time_based --runtime="$SECS" --minimal > /tmp/fio-"$1-$2".txt 2>&1 || return 1
  awk -F';' -v j="$1" -v l="$2" 'NF > 8 {print j, l, $8, $7}' /tmp/fio-"$1-$2".txt >> /tmp/pcompare.txt
}
: > /tmp/pcompare.txt
r=1
while [ $r -le "$ROUNDS" ]; do
  for job in randread4k seqread128k; do
    check "round$r-$job-baton" run_job $job baton "$baton_dev"
    check "round$r-$job-nvmet" run_job $job nvmet "$nvmet_dev"
  done
  r=$((r + 1))
done
sed 's/^/LAB-NOTE pcie-compare round: /' /tmp/pcompare.txt
sort -k1,1 -k2,2 -k3,3n /tmp/pcompare.txt | awk '{best[$1 " " $2] = $0}
  END {for (k in best) {split(best[k], f, " "); printf "LAB-RESULT pcie-compare %s %s iops=%d mbps=%.1f\n", f[1], f[2], f[3], f[4] * 1024 / 1e6}}'
check baton-disconnect nvme disconnect -n $NQN
check nvmet-disconnect nvme disconnect -n $K
check nvmet-teardown teardown_nvmet
check baton-stops stop_baton
check reset-pci baton setup-pci --reset "$A"
