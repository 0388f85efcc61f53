# DH-HMAC-CHAP with the real Linux host: Baton asks the hosts it has secrets for to
# authenticate; the right secret connects (null DH and SHA-256; ffdhe2048 and SHA-512),
# bidirectional with the controller secret, re-authentication on a live controller; no
# secret, a wrong secret or a wrong controller secret is refused. Then the same against the
# kernel's nvmet in this guest, the reference.
. /lab/lib.sh
# Keys made with `nvme gen-dhchap-key` on the build host (inside the guest it prints
# nothing). K1: host 1, C1: controller key (SHA-256 transformed), K2/K4: wrong keys,
# K3: host 2 (SHA-512 transformed, 64 bytes).
K1='DHHC-1:00:nzQyGoB2tG6k4QXJ9MSbg3WTmAs0QmItr2jX2WfAercscsIq:'
K2='DHHC-1:00:ATDAyGfVYTEIfwDRjYJQSVUIGi2OepOXzFCn8SkE5PQ8l+Ds:'
C1='DHHC-1:01:s3kqwrZlE0XAzs5jg++NfK2FwfBuVkVDAf4zKkQVLzX5wKAr:'
K4='DHHC-1:00:dW/7+zYl0Ojw/roZGDoA4EDNPBKZwoH25pyl74bx19eVBVqI:'
K3='DHHC-1:03:1DrwulU6i4dhvb+EtUJiOGlbFeJeoAEbQDbUTDVrHED4IOxYunExN3KwPjUEmKkyQph/ZAS/HtNlTF5ODcO+LmyGnMA=:'
H1=$(cat /etc/nvme/hostnqn)
U2=5b1f3c2e-6a8d-4e8b-9d61-2f0c7a4b9e13
H2=nqn.2014-08.org.nvmexpress:uuid:$U2
CFG=/tmp/baton-auth.yaml
sed "/^  discovery_port:/a\\
  hosts:\\
    - nqn: $H1\\
      dhchap_key: \"$K1\"\\
      dhchap_ctrl_key: \"$C1\"\\
    - nqn: $H2\\
      dhchap_key: \"$K3\"\\
      dhchap_hash: sha512\\
      dhchap_dhgroup: ffdhe2048" /lab/baton-lab.yaml > $CFG

# conn PORT SUBNQN [nvme connect options]: connect one path.
conn() { p=$1; n=$2; shift 2; nvme connect -t tcp -a 127.0.0.1 -s "$p" -n "$n" "$@"; }
# refused PORT SUBNQN [options]: the connect fails and no namespace of SUBNQN appears.
refused() {
  n=$2
  if conn "$@"; then echo "connect succeeded"; nvme disconnect -n "$n"; return 1; fi
  sleep 1
  ! ns_dev "$n" || { echo "a namespace appeared"; return 1; }
}
# io SUBNQN: a 1 MiB pattern written and read back through the namespace.
io() {
  wait_for 15 ns_dev "$1" || { echo "no namespace"; return 1; }
  d=$(ns_dev "$1")
  dd if=/tmp/pattern of=/dev/$d bs=1M count=1 seek=3 oflag=direct 2>/dev/null &&
    dd if=/dev/$d bs=1M count=1 skip=3 iflag=direct 2>/dev/null | cmp -s - /tmp/pattern
}
# authenticated: the host reported a successful authentication of the admin queue.
authenticated() { dmesg | grep -q "qid 0: authenticated"; }
dd if=/dev/urandom of=/tmp/pattern bs=1M count=1 2>/dev/null

check baton-starts start_baton $CFG || exit 1
dmesg -c > /dev/null
t0=$(now_ms)
check right-secret conn 4420 $NQN --dhchap-secret="$K1"
t1=$(now_ms)
check right-secret-authenticated authenticated
check right-secret-io io $NQN
check right-secret-disconnect nvme disconnect -n $NQN
check no-secret-refused refused 4420 $NQN
check wrong-secret-refused refused 4420 $NQN --dhchap-secret="$K2"
check bidirectional conn 4420 $NQN --dhchap-secret="$K1" --dhchap-ctrl-secret="$C1"
check bidirectional-io io $NQN
check bidirectional-disconnect nvme disconnect -n $NQN
check wrong-ctrl-secret-refused refused 4420 $NQN --dhchap-secret="$K1" --dhchap-ctrl-secret="$K4"
dmesg -c > /dev/null
t2=$(now_ms)
check ffdhe2048-sha512 conn 4420 $NQN --hostnqn=$H2 --hostid=$U2 --dhchap-secret="$K3"
t3=$(now_ms)
check ffdhe2048-authenticated sh -c "dmesg | grep -E 'qid 0: authenticated with hash hmac\(sha512\) dhgroup ffdhe2048' || { dmesg | grep -i auth | tail -5; false; }"
check ffdhe2048-io io $NQN
# Re-authentication: a new secret written to sysfs starts a new transaction on the live
# controller (the same secret here: Baton has only this one for the host).
c=$(ctrls $NQN | head -1)
dmesg -c > /dev/null
check reauthenticate sh -c "echo '$K3' > /sys/class/nvme/$c/dhchap_secret"
sleep 3
check reauth-still-live sh -c "[ \"\$(cat /sys/class/nvme/$c/state)\" = live ]"
check reauth-io io $NQN
dmesg | grep -iE 'auth' | tail -n 5 | sed 's/^/auth: /'
check ffdhe2048-disconnect nvme disconnect -n $NQN
check baton-stops stop_baton
echo "LAB-RESULT auth baton_connect_ms_null_sha256=$((t1 - t0)) baton_connect_ms_ffdhe2048_sha512=$((t3 - t2))"

# The reference: nvmet with the same host and secrets.
K=nqn.2026-11.io.baton:nvmet-auth
C=/sys/kernel/config/nvmet
truncate -s 64M /data/nvmet-auth.img
setup() {
  mkdir $C/hosts/$H1 &&
  echo "$K1" > $C/hosts/$H1/dhchap_key &&
  echo "$C1" > $C/hosts/$H1/dhchap_ctrl_key &&
  echo 'hmac(sha256)' > $C/hosts/$H1/dhchap_hash &&
  mkdir $C/subsystems/$K &&
  echo 0 > $C/subsystems/$K/attr_allow_any_host &&
  ln -s $C/hosts/$H1 $C/subsystems/$K/allowed_hosts/$H1 &&
  mkdir $C/subsystems/$K/namespaces/1 &&
  echo /data/nvmet-auth.img > $C/subsystems/$K/namespaces/1/device_path &&
  echo 1 > $C/subsystems/$K/namespaces/1/enable &&
  mkdir $C/ports/8 &&
  echo 127.0.0.1 > $C/ports/8/addr_traddr && echo tcp > $C/ports/8/addr_trtype &&
  echo 4431 > $C/ports/8/addr_trsvcid && echo ipv4 > $C/ports/8/addr_adrfam &&
  ln -s $C/subsystems/$K $C/ports/8/subsystems/$K
}
check nvmet-configfs setup
check nvmet-right-secret conn 4431 $K --dhchap-secret="$K1"
check nvmet-right-secret-io io $K
check nvmet-disconnect nvme disconnect -n $K
check nvmet-no-secret-refused refused 4431 $K
check nvmet-wrong-secret-refused refused 4431 $K --dhchap-secret="$K2"
check nvmet-bidirectional conn 4431 $K --dhchap-secret="$K1" --dhchap-ctrl-secret="$C1"
check nvmet-bidirectional-disconnect nvme disconnect -n $K
check nvmet-wrong-ctrl-secret-refused refused 4431 $K --dhchap-secret="$K1" --dhchap-ctrl-secret="$K4"
rm $C/ports/8/subsystems/$K; rmdir $C/ports/8
rm $C/subsystems/$K/allowed_hosts/$H1
echo 0 > $C/subsystems/$K/namespaces/1/enable; rmdir $C/subsystems/$K/namespaces/1 $C/subsystems/$K
rmdir $C/hosts/$H1
