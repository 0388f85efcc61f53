# Keep-alive loss: Baton is frozen (SIGSTOP) longer than the host's KATO, then resumed; the
# host's error recovery reconnects both paths and I/O works again.
. /lab/lib.sh
check baton-starts start_baton || exit 1
check connect-all nvme connect-all -t tcp -a 127.0.0.1 -s 8009 --keep-alive-tmo=2 --reconnect-delay=1
check two-live-paths wait_for 15 paths_are 2
dev=$(ns_dev)
for c in $(ls -d "$(subsys_dir)"/nvme* | grep -v 'n[0-9]*$'); do
  echo "LAB-NOTE $(basename "$c") kato=$(cat "$c/kato" 2>/dev/null) state=$(cat "$c/state")"
done
check freeze-baton kill -STOP "$BATON_PID"
sleep 15
for c in $(ls -d "$(subsys_dir)"/nvme* | grep -v 'n[0-9]*$'); do
  echo "LAB-NOTE frozen: $(basename "$c") state=$(cat "$c/state")"
done
dmesg | tail -n 8 | sed 's/^/LAB-NOTE dmesg: /'
check paths-down-while-frozen sh -c ". /lab/lib.sh; [ \$(live_paths) -lt 2 ]"
check resume-baton kill -CONT "$BATON_PID"
check reconnected wait_for 40 paths_are 2
check io-after-reconnect dd if=/dev/"$dev" of=/dev/null bs=64k count=16 iflag=direct
check disconnect nvme disconnect -n $NQN
check baton-stops-cleanly stop_baton
