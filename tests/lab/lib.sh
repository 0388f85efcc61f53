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

lab_need_packages() {
  local missing=()
  for p in "${LAB_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  lab_log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Newest Debian 6.12 kernel package name and version.
lab_kernel_package() {
  apt-cache search '^linux-image-6\.12\.[0-9.]*\+deb12-amd64-unsigned$' \
    | awk '{print $1}' | sort -V | tail -1
}
