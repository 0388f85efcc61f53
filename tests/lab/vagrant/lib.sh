# Shared by the Vagrant lab's host-side scripts (sourced after tests/lab/lib.sh).
VAGRANT_LAB="$LAB_DIR/vagrant"
VAGRANT_CACHE="$CACHE_DIR/vagrant"
mkdir -p "$VAGRANT_CACHE"

# Debian packages of the VM itself (vm-packages, one a line): the session-mode box has them
# (build-box), a workstation box gets them from provisioning; both through tests/install-packages.
mapfile -t VM_PACKAGES < "$VAGRANT_LAB/vm-packages"

# Host packages: Vagrant with the libvirt provider, a session-mode libvirtd and QEMU, and what
# the box build uses.
HOST_PACKAGES=(vagrant vagrant-libvirt libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
  qemu-system-x86 qemu-utils mmdebstrap e2fsprogs rsync openssh-client)

vlog() { printf '[vagrant-lab] %s\n' "$*" >&2; }
