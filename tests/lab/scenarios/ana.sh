# Asymmetric Namespace Access with the real host: both Baton controllers report namespace 1
# in ANA group 1; `baton ctl ana set` changes the group's state on one controller at run time,
# the host hears it (ANA change notice, then the ANA log) and moves its I/O: fio verify with
# zero errors while a path is inaccessible, then non-optimized, and while a path turns
# inaccessible under load. Per-controller write counters (Baton's metrics) show where the I/O
# went; sysfs ana_state and `nvme ana-log` show each state on the host.
. /lab/lib.sh
ADMIN="--admin 127.0.0.1:9440 --config /lab/baton-lab.yaml"

# ana_is CTRL STATE: the host's state of namespace 1's path through fabrics controller CTRL.
ana_is() { [ "$(cat /sys/class/nvme/"$1"/nvme*c*n1/ana_state 2>/dev/null)" = "$2" ]; }
# both_are STATE0 STATE1: the paths through Baton controllers 0 and 1, as the host sees them.
both_are() { ana_is "$c0" "$1" && ana_is "$c1" "$2"; }
# set_ana CONTROLLER STATE
set_ana() { baton ctl ana set --controller "$1" "$2" $ADMIN; }
# ana_log_says CTRL STATE: nvme ana-log through CTRL reports group 1 in STATE.
ana_log_says() { nvme ana-log /dev/"$1" | tee /tmp/ana-log.txt | grep -Eq "state[[:space:]]*:[[:space:]]*$2\$"; }
# written CONTROLLER: bytes hosts wrote through Baton controller CONTROLLER so far.
written() {
  http_get http://127.0.0.1:9440/metrics |
    grep -F "baton_nvme_bytes_total{controller=\"$1\",direction=\"write\"}" | awk '{print $2}'
}
# grew BEFORE NOW: NOW is larger (counters print as integers or floats).
grew() { [ -n "$1" ] && [ -n "$2" ] && awk -v a="$1" -v b="$2" 'BEGIN { exit !(b > a) }'; }
same() { [ -n "$1" ] && [ -n "$2" ] && awk -v a="$1" -v b="$2" 'BEGIN { exit !(b == a) }'; }

check baton-starts start_baton || exit 1
check connect-all nvme connect-all -t tcp -a 127.0.0.1 -s 8009 --reconnect-delay=1
check two-live-paths wait_for 15 paths_are 2
dev=$(ns_dev)
c0=$(ctrl_on_port 4420)
c1=$(ctrl_on_port 4421)
check both-controllers sh -c "[ -n '$c0' ] && [ -n '$c1' ] && [ -n '$dev' ]"
# CMIC: multi-port, multi-controller, ANA reporting.
check id-ctrl-cmic-ana sh -c "nvme id-ctrl /dev/$c0 | grep -Eq '^cmic[[:space:]]*:[[:space:]]*0xb\$'"
check host-uses-ana sh -c "[ \"\$(cat /sys/class/nvme/$c0/nvme*c*n1/ana_grpid)\" = 1 ]"
check both-optimized wait_for 10 both_are optimized optimized
check ana-log-optimized ana_log_says "$c1" optimized
# Round-robin over the optimized paths: both carry I/O while both are optimized.
check round-robin-iopolicy sh -c ". /lab/lib.sh; echo round-robin > \$(subsys_dir)/iopolicy"

# 1. Controller 1 inaccessible: the host hears the notice and writes only through 0.
check set-inaccessible set_ana 1 inaccessible
check host-sees-inaccessible wait_for 15 both_are optimized inaccessible
check ana-log-inaccessible ana_log_says "$c1" inaccessible
w0=$(written 0)
w1=$(written 1)
check fio-inaccessible-path fio_verify ana-inaccessible "$dev" 64k
check no-io-through-inaccessible same "$w1" "$(written 1)"
check io-through-optimized grew "$w0" "$(written 0)"

# 2. Controller 1 optimized again, controller 0 non-optimized: I/O moves to controller 1.
check set-optimized set_ana 1 optimized
check set-non-optimized set_ana 0 non-optimized
check host-sees-non-optimized wait_for 15 both_are non-optimized optimized
check ana-log-non-optimized ana_log_says "$c0" non-optimized
w0=$(written 0)
w1=$(written 1)
check fio-non-optimized fio_verify ana-non-optimized "$dev" 64k
check io-moves-to-optimized grew "$w1" "$(written 1)"
check no-io-through-non-optimized same "$w0" "$(written 0)"

# 3. Under load: both optimized, then controller 1 turns inaccessible and back while fio runs.
# fio runs for 20 s whatever the write speed (a fixed size ended within 3 s once writes got
# faster), verifying each block soon after writing it.
check both-optimized-again set_ana 0 optimized
check host-sees-both-optimized wait_for 15 both_are optimized optimized
fio --eta=never --name=ana-load --filename="/dev/$dev" --ioengine=libaio --direct=1 --rw=randwrite \
  --bs=64k --size=48M --numjobs=2 --offset_increment=48M --iodepth=16 --verify=crc32c \
  --time_based --runtime=20 --verify_backlog=64 --do_verify=1 --verify_fatal=1 \
  --group_reporting --output=/tmp/fio-ana-load.txt &
fio_pid=$!
sleep 3
check fio-running-at-change kill -0 $fio_pid
check set-inaccessible-under-load set_ana 1 inaccessible
check host-fails-over wait_for 15 both_are optimized inaccessible
sleep 2
check set-optimized-under-load set_ana 1 optimized
wait $fio_pid
rc=$?
check fio-load-zero-errors sh -c "[ $rc -eq 0 ] && grep -q 'err= 0' /tmp/fio-ana-load.txt || { tail -n 20 /tmp/fio-ana-load.txt; false; }"
check host-sees-optimized-after-load wait_for 15 both_are optimized optimized

# 4. Change and persistent loss reach the host too (kept short: a group in change for longer
# than ANATT makes the host reset the controller).
check set-change set_ana 1 change
check host-sees-change wait_for 8 both_are optimized change
check set-persistent-loss set_ana 1 persistent-loss
check host-sees-persistent-loss wait_for 15 both_are optimized persistent-loss
check ana-log-persistent-loss ana_log_says "$c1" persistent-loss
check restore-optimized set_ana 1 optimized
check host-sees-restored wait_for 15 both_are optimized optimized
check fio-after-restore fio_verify ana-restored "$dev" 4k

# Baton's own view: the status table and the metrics.
check status-shows-ana sh -c "baton status --admin 127.0.0.1:9440 | grep -q 'ANA GROUP'"
check ctl-ana-show sh -c "baton ctl ana show --admin 127.0.0.1:9440 | grep -c optimized | grep -qx 2"
check metrics-ana-state sh -c ". /lab/lib.sh; http_get http://127.0.0.1:9440/metrics | grep -qF 'baton_nvme_ana_state{controller=\"1\",group=\"1\",state=\"optimized\"} 1'"
check disconnect nvme disconnect -n $NQN
check baton-stops-cleanly stop_baton
