# Keep-alive loss: Baton is frozen (SIGSTOP) longer than the host's KATO, then resumed; the
# host notices (its paths leave the live state), its error recovery reconnects both paths and
# I/O works again.
. /lab/lib.sh
check baton-starts start_baton || exit 1
check connect-all nvme connect-all -t tcp -a 127.0.0.1 -s 8009 --keep-alive-tmo=2 --reconnect-delay=1
check two-live-paths wait_for 15 paths_are 2
dev=$(ns_dev)
for c in $(ctrls); do
  echo "LAB-NOTE $c kato=$(cat "/sys/class/nvme/$c/kato" 2>/dev/null) state=$(cat "/sys/class/nvme/$c/state")"
done
check kato-2s sh -c ". /lab/lib.sh; for c in \$(ctrls); do [ \$(cat /sys/class/nvme/\$c/kato) = 2 ] || exit 1; done"
check freeze-baton kill -STOP "$BATON_PID"
t0=$(now_ms)
# The host sends a keep-alive at least every KATO; a frozen target answers none.
check paths-down-while-frozen wait_for 30 paths_below 1
echo "LAB-RESULT keepalive loss_detected_ms=$(($(now_ms) - t0))"
for c in $(ctrls); do
  echo "LAB-NOTE frozen: $c state=$(cat "/sys/class/nvme/$c/state")"
done
dmesg | grep nvme | tail -n 6 | sed 's/^/LAB-NOTE dmesg: /'
sleep 3
check resume-baton kill -CONT "$BATON_PID"
t0=$(now_ms)
check reconnected wait_for 40 paths_are 2
echo "LAB-RESULT keepalive reconnect_ms=$(($(now_ms) - t0))"
dd if=/dev/urandom of=/tmp/pattern-ka bs=64k count=16 2>/dev/null
check io-after-reconnect sh -c "dd if=/tmp/pattern-ka of=/dev/$dev bs=64k count=16 seek=100 oflag=direct 2>/dev/null &&
  dd if=/dev/$dev bs=64k count=16 skip=100 iflag=direct 2>/dev/null | cmp -s - /tmp/pattern-ka"
check disconnect nvme disconnect -n $NQN
check baton-stops-cleanly stop_baton
