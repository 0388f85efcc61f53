# The kernel's own NVMe/TCP target and host on loopback: proves the lab works.
. /lab/lib.sh
K=nqn.2026-11.io.baton:nvmet-selfcheck
C=/sys/kernel/config/nvmet
truncate -s 64M /data/nvmet.img
setup() {
  mkdir $C/subsystems/$K &&
  echo 1 > $C/subsystems/$K/attr_allow_any_host &&
  mkdir $C/subsystems/$K/namespaces/1 &&
  echo /data/nvmet.img > $C/subsystems/$K/namespaces/1/device_path &&
  echo 1 > $C/subsystems/$K/namespaces/1/enable &&
  mkdir $C/ports/9 &&
  echo 127.0.0.1 > $C/ports/9/addr_traddr && echo tcp > $C/ports/9/addr_trtype &&
  echo 4430 > $C/ports/9/addr_trsvcid && echo ipv4 > $C/ports/9/addr_adrfam &&
  ln -s $C/subsystems/$K $C/ports/9/subsystems/$K
}
check configfs setup
check connect nvme connect -t tcp -a 127.0.0.1 -s 4430 -n $K
check namespace wait_for 10 ns_dev $K
check fio-verify fio_verify selfcheck "$(ns_dev $K)" 64k
check disconnect nvme disconnect -n $K
rm $C/ports/9/subsystems/$K; rmdir $C/ports/9
echo 0 > $C/subsystems/$K/namespaces/1/enable; rmdir $C/subsystems/$K/namespaces/1 $C/subsystems/$K
