# Compare, Verify and reservations with the real Linux host and nvme-cli: `nvme compare`
# (match and mismatch) and `nvme verify` on the namespace; then two hosts (the guest's own
# host NQN/ID on port 4420, a second host NQN/ID on 4421) register, acquire, report,
# preempt, release and clear, and each one's reads and writes (through its own controller)
# follow the reservation type's rules.
. /lab/lib.sh
U2=0b0e8f6a-2a1d-4f3c-9b7e-5d4c3b2a1f09
H2=nqn.2014-08.org.nvmexpress:uuid:$U2
dd if=/dev/urandom of=/tmp/blk bs=512 count=1 2>/dev/null
dd if=/dev/urandom of=/tmp/other bs=512 count=1 2>/dev/null

# fails_with PATTERN COMMAND...: the command fails and its output matches PATTERN.
fails_with() {
  p=$1
  shift
  if "$@" > /tmp/fails.out 2>&1; then cat /tmp/fails.out; echo "succeeded"; return 1; fi
  grep -qiE "$p" /tmp/fails.out || { cat /tmp/fails.out; return 1; }
}
CONFLICT='reservation.?conflict'
# wr CTRL / rd CTRL: one 512-byte block at LBA 16 through that host's own controller
# (its character device: the I/O goes on that path, whatever multipath would choose).
wr() { nvme io-passthru "$1" --opcode=0x01 --namespace-id=1 --data-len=512 --write --input-file=/tmp/blk --cdw10=16; }
rd() { nvme io-passthru "$1" --opcode=0x02 --namespace-id=1 --data-len=512 --read --cdw10=16 --raw-binary > /tmp/rd.bin; }
# access CTRL READ WRITE: READ and WRITE are ok or conflict.
access() {
  for op in rd:$2 wr:$3; do
    f=${op%%:*}
    if [ "${op#*:}" = ok ]; then
      $f "$1" > /tmp/access.out 2>&1 || { echo "$f on $1 failed:"; cat /tmp/access.out; return 1; }
    else
      fails_with "$CONFLICT" $f "$1" || { echo "$f on $1 was not refused"; return 1; }
    fi
  done
}
report_has() { nvme resv-report "$1" --namespace-id=1 --eds > /tmp/report.out 2>&1 && grep -qE "$2" /tmp/report.out || { cat /tmp/report.out; return 1; }; }

check baton-starts start_baton || exit 1
check connect-host-a nvme connect -t tcp -a 127.0.0.1 -s 4420 -n $NQN
check connect-host-b nvme connect -t tcp -a 127.0.0.1 -s 4421 -n $NQN --hostnqn=$H2 --hostid=$U2
check two-paths wait_for 15 paths_are 2 $NQN
check namespace wait_for 15 ns_dev $NQN
D=/dev/$(ns_dev $NQN)
A=/dev/$(ctrl_on_port 4420 $NQN)
B=/dev/$(ctrl_on_port 4421 $NQN)
echo "resv: namespace $D, host A $A, host B $B"
check id-ctrl-oncs-fuses sh -c "nvme id-ctrl $A | grep -E '^oncs +: 0xad' && nvme id-ctrl $A | grep -E '^fuses +: 0x1'"
check id-ns-rescap sh -c "nvme id-ns $D | grep -E '^rescap +: 0xfe'"

# Compare and Verify.
check write-block sh -c "nvme write $D --start-block=8 --block-count=0 --data-size=512 --data=/tmp/blk"
check compare-match nvme compare $D --start-block=8 --block-count=0 --data-size=512 --data=/tmp/blk
check compare-mismatch fails_with 'compare.?fail' nvme compare $D --start-block=8 --block-count=0 --data-size=512 --data=/tmp/other
check verify nvme verify $D --start-block=0 --block-count=1023
check verify-past-the-end fails_with 'lba.?out.?of.?range|out of range' nvme verify $D --start-block=524287 --block-count=7

# Registration and report.
check a-register nvme resv-register $A --namespace-id=1 --nrkey=0xa --rrega=0
check b-register nvme resv-register $B --namespace-id=1 --nrkey=0xb --rrega=0
check report-two-registrants report_has $A 'regctl *: *2'
check report-needs-eds fails_with 'inconsistent|host.?id' nvme resv-report $A --namespace-id=1
check register-other-key-conflicts fails_with "$CONFLICT" nvme resv-register $A --namespace-id=1 --nrkey=0xc --rrega=0
check persistence-refused fails_with 'invalid.?field' nvme resv-register $A --namespace-id=1 --crkey=0xa --nrkey=0xa --rrega=2 --cptpl=3

# Write Exclusive: B reads, B's writes conflict.
check a-acquire-we nvme resv-acquire $A --namespace-id=1 --crkey=0xa --rtype=1 --racqa=0
check report-we report_has $B 'rtype *: *1'
check we-holder-rw access $A ok ok
check we-other-reads-only access $B ok conflict
check b-acquire-conflicts fails_with "$CONFLICT" nvme resv-acquire $B --namespace-id=1 --crkey=0xb --rtype=1 --racqa=0
check a-release-we nvme resv-release $A --namespace-id=1 --crkey=0xa --rtype=1 --rrela=0
check released-b-writes access $B ok ok
# Exclusive Access: B can do neither.
check a-acquire-ea nvme resv-acquire $A --namespace-id=1 --crkey=0xa --rtype=2 --racqa=0
check ea-other-nothing access $B conflict conflict
check a-release-ea nvme resv-release $A --namespace-id=1 --crkey=0xa --rtype=2 --rrela=0
# Exclusive Access - Registrants Only: B is registered, so it may.
check a-acquire-earo nvme resv-acquire $A --namespace-id=1 --crkey=0xa --rtype=4 --racqa=0
check earo-registrant-rw access $B ok ok
check a-release-earo nvme resv-release $A --namespace-id=1 --crkey=0xa --rtype=4 --rrela=0

# Preempt: A holds Write Exclusive, B preempts it (taking Exclusive Access, A's registration
# goes), and A is told through the Reservation Notification log page.
check a-acquire-we-again nvme resv-acquire $A --namespace-id=1 --crkey=0xa --rtype=1 --racqa=0
check b-preempts-a nvme resv-acquire $B --namespace-id=1 --crkey=0xb --prkey=0xa --rtype=2 --racqa=1
check preempted-a-nothing access $A conflict conflict
check preempted-b-rw access $B ok ok
check report-after-preempt report_has $A 'regctl *: *1'
check a-notified sh -c "nvme get-log $A --log-id=0x80 --log-len=64 --raw-binary | od -An -tx1 -N9 | tr -d ' \n' | grep -E '^0[1-9a-f]0{14}01\$'"
# Clear: nothing registered, everyone writes.
check b-clears nvme resv-release $B --namespace-id=1 --crkey=0xb --rrela=1
check cleared-a-rw access $A ok ok
check report-cleared report_has $A 'regctl *: *0'

check disconnect nvme disconnect -n $NQN
check baton-stops stop_baton
