# The emulated NVMe backplane: one subsystem, 2 PCIe controllers sharing 2 namespaces, behind
# a vIOMMU. QEMU names the subsystem nqn.2019-08.org.qemu:baton-backplane.
. /lab/lib.sh
BP=nqn.2019-08.org.qemu:baton-backplane
check iommu-groups sh -c '[ -n "$(ls /sys/kernel/iommu_groups)" ]'
check two-pcie-controllers wait_for 15 paths_are 2 "$BP"
check two-shared-namespaces sh -c ". /lab/lib.sh; s=\$(subsys_dir $BP) && [ \$(ls -d \$s/nvme*n* | wc -l) = 2 ]"
