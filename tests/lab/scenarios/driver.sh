# The user-space NVMe driver on the emulated backplane: both PCIe controllers bound to
# vfio-pci (through the vIOMMU), the driver's hardware tests, including data written through
# controller A and read back through controller B.
. /lab/lib.sh
pcie_functions() {
  for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/class")" = 0x010802 ] && basename "$d"
  done
}
set -- $(pcie_functions)
A=$1
B=$2
check two-nvme-functions [ -n "$B" ]
check setup-pci baton setup-pci "$A" "$B" --hugepages 128
check bound-to-vfio sh -c "[ \$(basename \$(readlink /sys/bus/pci/devices/$A/driver)) = vfio-pci ]"
check hw-tests sh -c "BATON_NVME_PCI=$A BATON_NVME_PCI2=$B nvme-driver-hw --ignored --test-threads=1 > /tmp/hw.txt 2>&1; rc=\$?; tail -n 15 /tmp/hw.txt; exit \$rc"
grep -E '^test |test result' /tmp/hw.txt | sed 's/^/LAB-NOTE driver: /'
