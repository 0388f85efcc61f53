# Helpers for scenario scripts (sourced inside the guest).
NQN=nqn.2026-11.io.baton:lab
SCENARIO=$(basename "$0" .sh)

# check NAME COMMAND...: runs the command, prints LAB-CHECK SCENARIO/NAME PASS|FAIL.
# The command runs in this shell (not a subshell), so it may set variables (BATON_PID).
check() {
  local check_name=$1
  shift
  if "$@" > /tmp/check.out 2>&1; then
    echo "LAB-CHECK $SCENARIO/$check_name PASS"
    return 0
  fi
  echo "LAB-CHECK $SCENARIO/$check_name FAIL $(tail -n 12 /tmp/check.out | tr '\n' '|' | cut -c1-1200)"
  return 1
}

# http_get URL: the body of a GET (curl where the image has it, as the Vagrant VM does;
# busybox wget otherwise).
http_get() {
  if command -v curl > /dev/null 2>&1; then curl -sf "$1"; else wget -qO- "$1"; fi
}

# Uptime in milliseconds (busybox date has no %N).
now_ms() { awk '{printf "%d\n", $1 * 1000}' /proc/uptime; }

start_baton() {
  cfg=${1:-/lab/baton-lab.yaml}
  baton serve --config "$cfg" > /tmp/baton.log 2>&1 &
  BATON_PID=$!
  i=0
  while ! baton status --admin 127.0.0.1:9440 > /dev/null 2>&1; do
    i=$((i + 1))
    [ $i -gt 100 ] && { echo "baton did not start:"; tail -n 20 /tmp/baton.log; return 1; }
    sleep 0.2
  done
}

stop_baton() {
  [ -n "$BATON_PID" ] || { echo "baton is not running"; return 1; }
  kill -TERM "$BATON_PID" 2>/dev/null
  wait "$BATON_PID"
  rc=$?
  BATON_PID=
  return $rc
}

# The kernel's subsystem directory for NQN $1 (default: Baton's).
subsys_dir() {
  for s in /sys/class/nvme-subsystem/*; do
    [ -e "$s/subsysnqn" ] || continue
    [ "$(cat "$s/subsysnqn")" = "${1:-$NQN}" ] && { echo "$s"; return 0; }
  done
  return 1
}

# The multipath namespace block device (e.g. nvme2n1) of NQN $1.
ns_dev() {
  s=$(subsys_dir "$1") || return 1
  for n in "$s"/nvme*n*; do
    [ -e "$n" ] && { basename "$n"; return 0; }
  done
  return 1
}

# Controllers (paths) of NQN $1 in state live.
live_paths() {
  s=$(subsys_dir "$1") || { echo 0; return; }
  c=0
  for p in "$s"/nvme*; do
    case $(basename "$p") in nvme*n[0-9]*) continue ;; esac
    [ "$(cat "$p/state" 2>/dev/null)" = live ] && c=$((c + 1))
  done
  echo $c
}

# wait_for SECONDS COMMAND...: polls until the command succeeds.
wait_for() {
  t=$(($1 * 5))
  shift
  while ! "$@" > /dev/null 2>&1; do
    t=$((t - 1))
    [ $t -le 0 ] && return 1
    sleep 0.2
  done
}

paths_are() { [ "$(live_paths "$2")" = "$1" ]; }
paths_below() { [ "$(live_paths "$2")" -lt "$1" ]; }

# Fabrics controllers (e.g. nvme3) of NQN $1, one a line.
ctrls() {
  s=$(subsys_dir "$1") || return 1
  for p in "$s"/nvme*; do
    case $(basename "$p") in nvme*n[0-9]*) continue ;; esac
    basename "$p"
  done
}

# The fabrics controller of NQN $2 connected to TCP port $1 (from its address attribute).
ctrl_on_port() {
  for c in $(ctrls "$2"); do
    grep -Eq "trsvcid=$1(,|\$)" "/sys/class/nvme/$c/address" && { echo "$c"; return 0; }
  done
  return 1
}

# PCIe functions of the emulated backplane bound to driver $1 (nvme or vfio-pci), one a line.
pci_nvme_functions() {
  for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/class")" = 0x010802 ] || continue
    [ "$(basename "$(readlink "$d/driver" 2> /dev/null)")" = "$1" ] && basename "$d"
  done
}

# bind_driver BDF DRIVER: moves one PCIe function to another driver (nvme or vfio-pci).
bind_driver() {
  d=/sys/bus/pci/devices/$1
  [ -e "$d/driver" ] && echo "$1" > "$d/driver/unbind"
  echo "$2" > "$d/driver_override" && echo "$1" > /sys/bus/pci/drivers_probe &&
    echo > "$d/driver_override" &&
    [ "$(basename "$(readlink "$d/driver")")" = "$2" ]
}

# The /dev/vfio/N node of a function bound to vfio-pci.
vfio_node() { echo "/dev/vfio/$(basename "$(readlink "/sys/bus/pci/devices/$1/iommu_group")")"; }

# fio_verify NAME DEVICE BS [extra fio args]: randwrite then verify (crc32c), 2 jobs, QD 32.
fio_verify() {
  local name=$1 dev=$2 bs=$3
  shift 3
  fio --eta=never --name="$name" --filename="/dev/$dev" --ioengine=libaio --direct=1 \
    --rw=randwrite --bs="$bs" --size=16M --offset_increment=16M --numjobs=2 --iodepth=32 \
    --verify=crc32c --do_verify=1 --verify_fatal=1 --group_reporting \
    --output=/tmp/fio-"$name".txt "$@"
  rc=$?
  [ $rc -eq 0 ] && grep -q 'err= 0' /tmp/fio-"$name".txt || { tail -n 20 /tmp/fio-"$name".txt; return 1; }
}

# The kernel's block device of namespace $2 of subsystem NQN $1 (e.g. the backplane's).
kernel_ns() {
  s=$(subsys_dir "$1") || return 1
  for n in "$s"/nvme*n*; do
    [ "$(cat "$n/nsid" 2>/dev/null)" = "$2" ] && { basename "$n"; return 0; }
  done
  return 1
}

# compare_rounds SCENARIO BATON_DEV NVMET_DEV: the same fio jobs (4 KiB random read QD 32,
# 128 KiB sequential read QD 8, $SECS seconds each) against both devices, taking turns for
# $ROUNDS rounds so a busy host slows both alike; prints every round as a LAB-NOTE and each
# target's best round as `LAB-RESULT SCENARIO JOB TARGET iops=N mbps=M`.
compare_rounds() {
  local scenario=$1 r=1 job
  : > /tmp/"$scenario".txt
  while [ $r -le "$ROUNDS" ]; do
    for job in randread4k seqread128k; do
      check "round$r-$job-baton" compare_job "$scenario" $job baton "$2"
      check "round$r-$job-nvmet" compare_job "$scenario" $job nvmet "$3"
    done
    r=$((r + 1))
  done
  sed "s/^/LAB-NOTE $scenario round: /" /tmp/"$scenario".txt
  sort -k1,1 -k2,2 -k3,3n /tmp/"$scenario".txt | awk -v s="$scenario" '{best[$1 " " $2] = $0}
    END {for (k in best) {split(best[k], f, " "); printf "LAB-RESULT %s %s %s iops=%d mbps=%.1f\n", s, f[1], f[2], f[3], f[4] * 1024 / 1e6}}'
}

# compare_job SCENARIO JOB LABEL DEVICE: one fio run; appends "JOB LABEL IOPS KiB/s".
compare_job() {
  case $2 in
    randread4k) args="--rw=randread --bs=4k --iodepth=32" ;;
    seqread128k) args="--rw=read --bs=128k --iodepth=8" ;;
  esac
  # shellcheck disable=SC2086
  fio --eta=never --name="$2" --filename="/dev/$4" --ioengine=libaio --direct=1 $args \
    --size=64M --time_based --runtime="$SECS" --minimal > /tmp/fio-"$1-$2-$3".txt 2>&1 || return 1
  # Terse v3: field 7 read KiB/s, field 8 read IOPS.
  awk -F';' -v j="$2" -v l="$3" 'NF > 8 {print j, l, $8, $7}' /tmp/fio-"$1-$2-$3".txt >> /tmp/"$1".txt
}

# nvmet_export NQN DEVICE PORT TRSVCID: the kernel's nvmet-tcp serves DEVICE (a file or block
# device) as namespace 1 of NQN to any host, on 127.0.0.1:TRSVCID (configfs port PORT).
nvmet_export() {
  local c=/sys/kernel/config/nvmet
  mkdir "$c/subsystems/$1" && echo 1 > "$c/subsystems/$1/attr_allow_any_host" &&
    mkdir "$c/subsystems/$1/namespaces/1" &&
    echo "$2" > "$c/subsystems/$1/namespaces/1/device_path" &&
    echo 1 > "$c/subsystems/$1/namespaces/1/enable" && mkdir "$c/ports/$3" &&
    echo 127.0.0.1 > "$c/ports/$3/addr_traddr" && echo tcp > "$c/ports/$3/addr_trtype" &&
    echo "$4" > "$c/ports/$3/addr_trsvcid" && echo ipv4 > "$c/ports/$3/addr_adrfam" &&
    ln -s "$c/subsystems/$1" "$c/ports/$3/subsystems/$1"
}

# nvmet_unexport NQN PORT: undoes nvmet_export.
nvmet_unexport() {
  local c=/sys/kernel/config/nvmet
  rm "$c/ports/$2/subsystems/$1" && rmdir "$c/ports/$2" &&
    echo 0 > "$c/subsystems/$1/namespaces/1/enable" &&
    rmdir "$c/subsystems/$1/namespaces/1" "$c/subsystems/$1"
}
