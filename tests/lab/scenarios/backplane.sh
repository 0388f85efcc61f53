# The emulated NVMe backplane: one subsystem, 2 PCIe controllers sharing 2 namespaces, behind
# a vIOMMU; one controller moves to vfio-pci (as the user-space driver tests need) and back.
# QEMU names the subsystem nqn.2019-08.org.qemu:baton-backplane.
. /lab/lib.sh
BP=nqn.2019-08.org.qemu:baton-backplane
check iommu-groups sh -c '[ -n "$(ls /sys/kernel/iommu_groups)" ]'
check two-pcie-controllers wait_for 15 paths_are 2 "$BP"
check two-shared-namespaces sh -c ". /lab/lib.sh; s=\$(subsys_dir $BP) && [ \$(ls -d \$s/nvme*n* | wc -l) = 2 ]"
check shared-namespace-nmic sh -c ". /lab/lib.sh; nvme id-ns /dev/\$(ns_dev $BP) | grep -Eq '^nmic +: 0x1'"
bdf=$(pci_nvme_functions nvme | tail -n 1)
check bind-vfio-pci bind_driver "$bdf" vfio-pci
check vfio-group-node sh -c ". /lab/lib.sh; [ -c \$(vfio_node $bdf) ]"
check one-path-left wait_for 10 paths_are 1 "$BP"
check rebind-nvme bind_driver "$bdf" nvme
check two-paths-again wait_for 15 paths_are 2 "$BP"
