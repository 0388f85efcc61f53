# One Baton controller's connections are dropped during fio: the multipath host carries on
# over the other path with zero errors, and the dropped path comes back.
. /lab/lib.sh
check baton-starts start_baton || exit 1
check connect-all nvme connect-all -t tcp -a 127.0.0.1 -s 8009 --reconnect-delay=1
check two-live-paths wait_for 15 paths_are 2
dev=$(ns_dev)
fio --name=failover --filename="/dev/$dev" --ioengine=libaio --direct=1 --rw=randwrite --bs=64k \
  --size=32M --numjobs=2 --offset_increment=32M --iodepth=16 --verify=crc32c --do_verify=1 \
  --verify_fatal=1 --group_reporting --output=/tmp/fio-failover.txt &
fio_pid=$!
sleep 2
check drop-controller-1 baton ctl drop-connections --controller 1 --admin 127.0.0.1:9440
wait $fio_pid
rc=$?
check fio-zero-errors sh -c "[ $rc -eq 0 ] || { tail -n 20 /tmp/fio-failover.txt; false; }"
check path-comes-back wait_for 30 paths_are 2
check disconnect nvme disconnect -n $NQN
check baton-stops-cleanly stop_baton
