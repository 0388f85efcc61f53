# The Linux NVMe/TCP host against Baton: discovery, multipath, identify, fio verify with and
# without digests, discard and write zeroes, fast disconnect.
. /lab/lib.sh
check baton-starts start_baton || exit 1
check discover-lists-every-port sh -c "nvme discover -t tcp -a 127.0.0.1 -s 8009 > /tmp/disc.txt &&
  grep -c 'subnqn:.*$NQN' /tmp/disc.txt | grep -qx 2 && grep -q 'trsvcid: 4420' /tmp/disc.txt &&
  grep -q 'trsvcid: 4421' /tmp/disc.txt || { cat /tmp/disc.txt; false; }"
check discover-names-the-current-discovery-subsystem sh -c "grep -q 'current discovery subsystem' /tmp/disc.txt || { cat /tmp/disc.txt; false; }"
check connect-all nvme connect-all -t tcp -a 127.0.0.1 -s 8009
check two-live-paths wait_for 15 paths_are 2
check one-namespace sh -c ". /lab/lib.sh; s=\$(subsys_dir) && [ \$(ls -d \$s/nvme*n* | wc -l) = 1 ]"
dev=$(ns_dev)
ctrl=$(basename "$(ls -d "$(subsys_dir)"/nvme* | grep -v 'n[0-9]*$' | head -1)")
nvme list-subsys > /tmp/list-subsys.txt 2>&1
check list-subsys-two-live-paths sh -c "grep -c 'tcp traddr=127.0.0.1,trsvcid=442[01].* live' /tmp/list-subsys.txt | grep -qx 2 || { cat /tmp/list-subsys.txt; false; }"
nvme id-ctrl "/dev/$ctrl" > /tmp/id-ctrl.txt 2>&1
idc() { grep -Eq "$1" /tmp/id-ctrl.txt || { echo "id-ctrl: no line matching $1"; grep -E "^${1%% *}" /tmp/id-ctrl.txt; false; }; }
check id-ctrl-cmic-multi-port-multi-controller-ana idc '^cmic +: 0xb'
check id-ctrl-mdts idc '^mdts +: 8$'
check id-ctrl-subnqn idc "^subnqn +: $NQN"
check id-ctrl-cntlid-nonzero idc '^cntlid +: 0x[1-9a-f]'
check cntlid-differs-per-path sh -c ". /lab/lib.sh; ids=\$(for c in \$(ctrls); do cat /sys/class/nvme/\$c/cntlid; done | sort -u | wc -l); [ \$ids = 2 ]"
check id-ctrl-kas idc '^kas +: (0x)?[1-9]'
check id-ctrl-sgls idc '^sgls +: 0x100001'
nvme id-ns "/dev/$dev" > /tmp/id-ns.txt 2>&1
check id-ns-sane sh -c "grep -Eq '^nmic +: 0x1' /tmp/id-ns.txt && grep -Eq '^nsze +: 0x80000' /tmp/id-ns.txt &&
  grep -Eq '^noiob +: 256' /tmp/id-ns.txt && ! grep -Eq '^nguid +: 0+\$' /tmp/id-ns.txt || { head -40 /tmp/id-ns.txt; false; }"
for bs in 4k 64k 1m; do
  check fio-verify-$bs fio_verify plain-$bs "$dev" $bs
done
# Discard: blocks read back as zeroes.
dd if=/dev/urandom of=/tmp/pattern bs=1M count=1 2>/dev/null
check discard-reads-zeroes sh -c "dd if=/tmp/pattern of=/dev/$dev bs=1M count=1 seek=20 oflag=direct 2>/dev/null &&
  blkdiscard -o \$((20 << 20)) -l \$((1 << 20)) /dev/$dev &&
  dd if=/dev/$dev bs=1M count=1 skip=20 iflag=direct 2>/dev/null | cmp -s - /dev/zero -n 1048576"
check write-zeroes sh -c "dd if=/tmp/pattern of=/dev/$dev bs=1M count=1 seek=21 oflag=direct 2>/dev/null &&
  nvme write-zeroes /dev/$dev --start-block=\$((21 * 2048)) --block-count=2047 &&
  dd if=/dev/$dev bs=1M count=1 skip=21 iflag=direct 2>/dev/null | cmp -s - /dev/zero -n 1048576"
check untouched-data-intact sh -c "dd if=/tmp/pattern of=/dev/$dev bs=1M count=1 seek=22 oflag=direct 2>/dev/null &&
  dd if=/dev/$dev bs=1M count=1 skip=22 iflag=direct 2>/dev/null | cmp -s - /tmp/pattern"
# Disconnect: the host shuts each controller down (CC.SHN) and waits for CSTS.SHST, up to
# seconds if the target never reports completion. Under TCG on a busy host, merely starting
# nvme-cli (dozens of libraries) can take a good part of a second, so that start-up time,
# measured just before, is taken off.
t0=$(now_ms)
nvme version > /dev/null
t1=$(now_ms)
check disconnect nvme disconnect -n $NQN
t2=$(now_ms)
# How long the disconnect took is a measurement, not a check (no timing assertions: a busy
# TCG host once took 1.7 s for what usually takes 0.3 s).
echo "LAB-RESULT interop disconnect_ms=$((t2 - t1)) nvme_cli_start_ms=$((t1 - t0))"
# Digests on both paths.
check connect-digests sh -c "nvme connect -t tcp -a 127.0.0.1 -s 4420 -n $NQN --hdr-digest --data-digest &&
  nvme connect -t tcp -a 127.0.0.1 -s 4421 -n $NQN --hdr-digest --data-digest"
check digest-paths-live wait_for 15 paths_are 2
dev=$(ns_dev)
for bs in 4k 64k 1m; do
  check fio-verify-digests-$bs fio_verify digest-$bs "$dev" $bs
done
check disconnect-digests nvme disconnect -n $NQN
check baton-stops-cleanly stop_baton
