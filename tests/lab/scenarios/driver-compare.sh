# Benchmark: 4 KiB random reads on the same emulated controller, first through the
# appliance's nvme-pcie engine (user-space driver, vfio-pci) at QD 1, 8, 32 and 128, then
# with the kernel's nvme driver and fio (libaio, direct) at QD 32.
# Prints LAB-RESULT lines; no pass/fail on numbers.
. /lab/lib.sh
SECS=${LAB_COMPARE_SECONDS:-5}
set -- $(for d in /sys/bus/pci/devices/*; do [ "$(cat "$d/class")" = 0x010802 ] && basename "$d"; done)
A=$1
B=$2
check setup-pci baton setup-pci "$A" "$B" --hugepages 128
check user-space-bench sh -c "baton bench-pcie $A --qd 1,8,32,128 --seconds $SECS > /tmp/ud.txt 2>&1 || { cat /tmp/ud.txt; false; }"
for qd in 1 8 32 128; do
  n=$(sed -n "s/.*QD $qd: \([0-9]*\) IOPS.*/\1/p" /tmp/ud.txt)
  echo "LAB-RESULT pcie userspace qd=$qd iops=${n:-0}"
done
ud=$(sed -n 's/.*QD 32: \([0-9]*\) IOPS.*/\1/p' /tmp/ud.txt)
echo "LAB-RESULT pcie userspace iops=${ud:-0}"
check reset-pci baton setup-pci --reset "$A" "$B"
BP=nqn.2019-08.org.qemu:baton-backplane
check kernel-namespace wait_for 20 ns_dev $BP
dev=$(ns_dev $BP)
fio --eta=never --name=k --filename="/dev/$dev" --ioengine=libaio --direct=1 --rw=randread --bs=4k --iodepth=32 \
  --size=64M --time_based --runtime="$SECS" --minimal > /tmp/kfio.txt 2>&1
echo "LAB-RESULT pcie kernel iops=$(awk -F';' '{print $8}' /tmp/kfio.txt)"
