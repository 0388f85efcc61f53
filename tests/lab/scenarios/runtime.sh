# Run-time changes with the real host: a subsystem's allowed hosts changed with
# `baton ctl host add|remove` (a removed host keeps its live association, new connects are
# refused); a namespace added and removed with `baton ctl namespace` while the host is
# connected appears and disappears on it without a reconnect; a subsystem added with `baton
# ctl subsystem` is discovered and served, and removed loses its paths; and SIGHUP: a reload
# that changes the allowed hosts, the namespaces and an ANA state applies, one that changes
# a volume is refused with the key and line logged, and Baton keeps serving.
. /lab/lib.sh
HOST=$(cat /etc/nvme/hostnqn)
CFG=/tmp/runtime.yaml
CTL="--admin 127.0.0.1:9440 --config $CFG"

# The lab configuration, admitting listed hosts only, with a spare volume no namespace
# uses; $1: a line after allow_any_host, $2: a line after discovery_port, $3: a sed
# expression applied last, $4: a namespace line after namespace 1's.
write_config() {
  sed 's/allow_any_host: true/allow_any_host: false/' /lab/baton-lab.yaml |
    awk -v sub_line="$1" -v nvme_line="$2" -v ns_line="$4" '{ print }
      /^devices:/ { print "  - {name: d2, kind: file, path: spare.img, size: 64MiB}" }
      /^volumes:/ { print "  - {name: spare, devices: [d2], block_size: 512}" }
      /allow_any_host: false/ && sub_line != "" { print sub_line }
      /volume: vol0/ && ns_line != "" { print ns_line }
      /discovery_port:/ && nvme_line != "" { print nvme_line }' |
    sed "${3:-p;d}" > "$CFG.new" && mv "$CFG.new" "$CFG"
}
# The multipath block device of namespace $1 of Baton's subsystem.
ns_dev_nsid() {
  s=$(subsys_dir) || return 1
  for n in "$s"/nvme*n*; do
    [ "$(cat "$n/nsid" 2>/dev/null)" = "$1" ] && { basename "$n"; return 0; }
  done
  return 1
}
no_ns() { ! ns_dev_nsid "$1"; }
# The host kept its controllers: the one on port 4421 is still $c1, both paths live.
same_paths() { [ "$(ctrl_on_port 4421)" = "$c1" ] && [ "$(live_paths)" = 2 ]; }
connect() { nvme connect -t tcp -a 127.0.0.1 -s "$1" -n $NQN; }
# refused PORT: the connect fails, and the host logs that it is not allowed.
refused() {
  n=$(dmesg | grep -ci 'not allowed\|invalid host')
  ! connect "$1" && [ "$(dmesg | grep -ci 'not allowed\|invalid host')" -gt "$n" ]
}
ana_is() { [ "$(cat /sys/class/nvme/"$1"/nvme*c*n1/ana_state 2>/dev/null)" = "$2" ]; }

write_config ""
check baton-starts start_baton $CFG || exit 1
check unlisted-host-refused refused 4420
check host-add baton ctl host add --subsystem $NQN "$HOST" $CTL
check listed-host-connects connect 4420
check one-live-path wait_for 15 paths_are 1
dev=$(ns_dev)
check fio-after-add fio_verify runtime-add "$dev" 64k
check host-remove baton ctl host remove --subsystem $NQN "$HOST" $CTL
# Its live association stays; a new one is refused.
check association-stays fio_verify runtime-removed "$dev" 4k
check new-path-refused refused 4421
check still-one-path paths_are 1
check disconnect nvme disconnect -n $NQN

# SIGHUP with the host listed in the file: admitted again, on both paths.
write_config "    allowed_hosts: [\"$HOST\"]"
check sighup kill -HUP "$BATON_PID"
check reload-admits-host wait_for 10 connect 4420
check second-path connect 4421
check two-live-paths wait_for 15 paths_are 2
c1=$(ctrl_on_port 4421)
check baton-alive-after-sighup kill -0 "$BATON_PID"

# A namespace added while connected: the host rescans on the notice, both paths stay.
check ns-add baton ctl namespace add --subsystem $NQN --nsid 2 --volume spare $CTL
check host-sees-ns2 wait_for 20 ns_dev_nsid 2
dev2=$(ns_dev_nsid 2)
check fio-on-added-ns fio_verify runtime-ns2 "$dev2" 4k
check no-reconnect same_paths
check status-lists-ns2 sh -c "baton status --admin 127.0.0.1:9440 | grep -q '2:spare'"
check exported-volume-refused sh -c "! baton ctl namespace add --subsystem $NQN --nsid 3 --volume vol0 $CTL"
check unknown-volume-refused sh -c "! baton ctl namespace add --subsystem $NQN --nsid 3 --volume nope $CTL"
# Removed while connected: the host drops the disk, namespace 1 carries on.
check ns-remove baton ctl namespace remove --subsystem $NQN --nsid 2 $CTL
check host-drops-ns2 wait_for 20 no_ns 2
check status-drops-ns2 sh -c "! baton status --admin 127.0.0.1:9440 | grep -q '2:spare'"
check ns1-after-remove fio_verify runtime-ns1 "$dev" 64k
check still-two-paths paths_are 2

# A subsystem added while running: discovered, connected, served; removed: the host loses
# its paths and the other subsystem carries on.
NQN2=nqn.2026-11.io.baton:lab2
check subsys-add baton ctl subsystem add $NQN2 --allow-any-host $CTL
check subsys-ns-add baton ctl namespace add --subsystem $NQN2 --nsid 1 --volume spare $CTL
check discovery-lists-lab2 sh -c "nvme discover -t tcp -a 127.0.0.1 -s 8009 | grep -q $NQN2"
check lab2-connects nvme connect -t tcp -a 127.0.0.1 -s 4421 -n $NQN2
check lab2-path wait_for 15 paths_are 1 $NQN2
dev3=$(ns_dev $NQN2)
check fio-on-lab2 fio_verify runtime-lab2 "$dev3" 4k
check subsys-remove baton ctl subsystem remove $NQN2 $CTL
check lab2-path-lost wait_for 15 paths_are 0 $NQN2
check lab2-not-discovered sh -c "! nvme discover -t tcp -a 127.0.0.1 -s 8009 | grep -q $NQN2"
check lab2-disconnect nvme disconnect -n $NQN2
check lab-after-subsys-remove fio_verify runtime-after-lab2 "$dev" 64k

# SIGHUP with namespace 2 in the file adds it; without it again, removes it.
write_config "    allowed_hosts: [\"$HOST\"]" "" "" "      - {nsid: 2, volume: spare}"
check sighup-ns-add kill -HUP "$BATON_PID"
check reload-adds-ns2 wait_for 20 ns_dev_nsid 2
write_config "    allowed_hosts: [\"$HOST\"]"
check sighup-ns-remove kill -HUP "$BATON_PID"
check reload-removes-ns2 wait_for 20 no_ns 2

# A reload that changes a volume is refused: the key and line are logged, nothing changes.
write_config "    allowed_hosts: [\"$HOST\"]" "" 's/stripe_size: 128KiB/stripe_size: 64KiB/'
check sighup-refused kill -HUP "$BATON_PID"
check refusal-logged wait_for 10 grep -q 'reload refused' /tmp/baton.log
check refusal-names-key sh -c "grep 'reload refused' /tmp/baton.log | grep -q 'volumes\[1\].stripe_size'"
check still-serving fio_verify runtime-refused "$dev" 64k

# ANA states in the file apply on reload too: controller 1 non-optimized, seen by the host.
write_config "    allowed_hosts: [\"$HOST\"]" "  ana: [{controller: 1, state: non-optimized}]"
check sighup-ana kill -HUP "$BATON_PID"
check host-sees-non-optimized wait_for 15 ana_is "$c1" non-optimized
check ctl-shows-non-optimized sh -c "baton ctl ana show --admin 127.0.0.1:9440 | grep -q non-optimized"
check fio-after-ana-reload fio_verify runtime-ana "$dev" 64k
check disconnect-all nvme disconnect -n $NQN
check baton-stops-cleanly stop_baton
