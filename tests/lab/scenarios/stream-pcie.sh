# The stream service on the nvme-pcie backplane: the content store on a volume of the
# emulated subsystem's namespace 1, two Baton controllers each through its own PCIe
# controller with the user-space driver. Items of awkward sizes go in with `baton put` and
# come back byte-exact through the baton-passing stream (`baton fetch`) and the HTTP face
# (ranges that start and end off block boundaries, with curl); ffprobe reads an MPEG-TS
# through the HTTP face; a controller's stream worker is stopped mid-stream and the stream is
# re-planned over the other, still byte-exact. (curl and ffmpeg come from stream-pcie.build.)
. /lab/lib.sh
set -- $(for d in /sys/bus/pci/devices/*; do [ "$(cat "$d/class")" = 0x010802 ] && basename "$d"; done)
cat > /tmp/stream-pcie.yaml <<YAML
data_dir: /data
controllers: {count: 2, pin: false}
nvme_tcp: {address: 127.0.0.1, base_port: 4420, discovery_port: 8009}
admin: {address: "127.0.0.1:9440", token: lab-token-0123456789}
devices: [{name: bp, kind: nvme-pcie, controllers: ["$1", "$2"], nsid: 1}]
volumes: [{name: store, devices: [bp], block_size: 512}]
subsystems: []
stream:
  volume: store
  address: 127.0.0.1
  control_port: 9450
  http_port: 8080
  data_port_base: 9460
  block_size: 256KiB
  window: 4
logging: {level: warn}
YAML
# Namespace 1 holds what earlier scenarios wrote (the driver's hardware tests): clear the
# start of it through the kernel's driver, so the store formats itself.
BP=nqn.2019-08.org.qemu:baton-backplane
check kernel-namespace-1 wait_for 20 kernel_ns $BP 1
check clear-store-area dd if=/dev/zero of="/dev/$(kernel_ns $BP 1)" bs=1M count=1 oflag=direct
check setup-pci baton setup-pci "$1" "$2" --hugepages 128
check baton-starts start_baton /tmp/stream-pcie.yaml || { tail -n 5 /tmp/baton.log; exit 1; }
mkdir -p /tmp/sp
: > /tmp/sp/0
printf x > /tmp/sp/1
head -c 4095 /dev/urandom > /tmp/sp/4095
head -c 1000001 /dev/urandom > /tmp/sp/1000001
head -c $((37 * 1048576 + 123)) /dev/urandom > /tmp/sp/big
for n in 0 1 4095 1000001 big; do
  check "put-$n" baton put /tmp/sp/$n --name "item-$n"
done
for n in 0 1 4095 1000001 big; do
  check "fetch-$n-byte-exact" sh -c "baton fetch item-$n -o /tmp/sp/$n.back && cmp /tmp/sp/$n /tmp/sp/$n.back"
done
# Ranges through the framed stream and through the HTTP face, off block boundaries.
range_ok() { # name offset length
  dd if=/tmp/sp/$1 of=/tmp/sp/want bs=1 skip=$2 count=$3 2>/dev/null
  baton fetch item-$1 --offset $2 --length $3 -o /tmp/sp/got && cmp /tmp/sp/want /tmp/sp/got || return 1
  curl -sf -o /tmp/sp/http -r "$2-$(($2 + $3 - 1))" "http://127.0.0.1:8080/content/item-$1" \
    && cmp /tmp/sp/want /tmp/sp/http
}
check range-inside-one-block range_ok 1000001 1000 2000
check range-across-blocks range_ok 1000001 262100 300001
check range-to-the-last-byte range_ok 1000001 999990 11
check range-of-the-big-item-tail range_ok big $((37 * 1048576 - 7)) 130
# Byte-exact through HTTP in one piece.
check http-whole-item sh -c "curl -sf -o /tmp/sp/whole http://127.0.0.1:8080/content/item-1000001 && cmp /tmp/sp/1000001 /tmp/sp/whole"
# A real MPEG-TS, made in the guest, stored, and probed by ffprobe through the HTTP face.
check make-mpegts ffmpeg -v error -f lavfi -i testsrc=duration=4:size=320x240:rate=25 \
  -c:v mpeg2video -f mpegts /tmp/sp/clip.ts
check put-mpegts baton put /tmp/sp/clip.ts --name clip.ts
check ffprobe-over-http sh -c "ffprobe -v error -show_entries format=format_name -of default=nw=1 \
  http://127.0.0.1:8080/content/clip.ts | grep -qx format_name=mpegts"
# A controller stopped mid-stream: paced so the stream is still running when worker 1 stops.
(baton fetch item-big --rate 80000000 -o /tmp/sp/replanned > /tmp/sp/replan.log 2>&1; echo $? > /tmp/sp/replan.rc) &
sleep 1
check stop-worker-1 baton ctl stop-streams --controller 1 --config /tmp/stream-pcie.yaml
check replanned-stream-finishes wait_for 120 test -s /tmp/sp/replan.rc
check replanned-stream-byte-exact sh -c "[ \$(cat /tmp/sp/replan.rc) = 0 ] && cmp /tmp/sp/big /tmp/sp/replanned"
echo "LAB-RESULT stream-pcie replan_log=\"$(tr '\n' ' ' < /tmp/sp/replan.log | cut -c1-200)\""
rm -rf /tmp/sp
check baton-stops-cleanly stop_baton
check reset-pci baton setup-pci --reset "$1" "$2"
