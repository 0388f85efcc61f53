# One Baton controller's connections are dropped during fio verify: the multipath host carries
# on over the other path with zero errors, and the dropped path comes back.
. /lab/lib.sh
check baton-starts start_baton || exit 1
check connect-all nvme connect-all -t tcp -a 127.0.0.1 -s 8009 --reconnect-delay=1
check two-live-paths wait_for 15 paths_are 2
dev=$(ns_dev)
c1=$(ctrl_on_port 4421)
check controller-1-path sh -c "[ -n '$c1' ]"
# Spread I/O over both paths so the dropped one has commands in flight.
check round-robin-iopolicy sh -c ". /lab/lib.sh; echo round-robin > \$(subsys_dir)/iopolicy"
# fio runs for 12 s whatever the write speed, verifying each block soon after writing it.
fio --eta=never --name=failover --filename="/dev/$dev" --ioengine=libaio --direct=1 --rw=randwrite --bs=64k \
  --size=48M --numjobs=2 --offset_increment=48M --iodepth=16 --verify=crc32c --do_verify=1 \
  --time_based --runtime=12 --verify_backlog=64 \
  --verify_fatal=1 --group_reporting --output=/tmp/fio-failover.txt &
fio_pid=$!
sleep 3
check fio-running-at-drop kill -0 $fio_pid
check drop-controller-1 baton ctl drop-connections --controller 1 --admin 127.0.0.1:9440 \
  --config /lab/baton-lab.yaml
wait $fio_pid
rc=$?
check fio-zero-errors sh -c "[ $rc -eq 0 ] && grep -q 'err= 0' /tmp/fio-failover.txt || { tail -n 20 /tmp/fio-failover.txt; false; }"
# The host saw the drop on controller 1's path and recovers it.
check host-saw-drop sh -c "dmesg | grep -E '$c1: (starting error recovery|Reconnecting|reconnect)' ||
  { dmesg | grep nvme | tail -n 10; false; }"
check path-comes-back wait_for 30 paths_are 2
check disconnect nvme disconnect -n $NQN
check baton-stops-cleanly stop_baton
