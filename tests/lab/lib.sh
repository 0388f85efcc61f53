# Shared by the lab's host-side scripts (sourced).
LAB_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$LAB_DIR/../.." && pwd)"
CACHE_DIR="$LAB_DIR/.cache"
OUT_DIR="$LAB_DIR/out"
mkdir -p "$CACHE_DIR" "$OUT_DIR"

lab_log() { printf '[lab] %s\n' "$*" >&2; }

# Debian packages the lab needs on the build host.
LAB_PACKAGES=(qemu-system-x86 busybox-static cpio kmod nvme-cli fio xz-utils util-linux gzip
  binutils)

lab_need_packages() { "$REPO_DIR/tests/install-packages" "${LAB_PACKAGES[@]}"; }

# Newest Debian 6.12 kernel package name and version.
lab_kernel_package() {
  apt-cache search '^linux-image-6\.12\.[0-9.]*\+deb12-amd64-unsigned$' \
    | awk '{print $1}' | sort -V | tail -1
}
