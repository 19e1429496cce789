#!/usr/bin/env bash
# The main job: build the samples with probes, check them, list their probes,
# load every object into the kernel verifier, then make the probes fire:
# instrument a sample with the recorder and load it, instrument it with the
# sample observer (samples/observer.bpf.c) and watch its map count drops, and
# end with `bpf-sdt trace` printing the probes of two samples, typed, as test
# runs push packets through them, and trace one that iproute2 loaded, live,
# swapping an instrumented copy in and back (step 9).  Steps 5-9 need bpf() (root).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
STEPS=10
step() { echo; echo "==> [$1/$STEPS] $2"; }

step 1 "setup (installs only what is missing)"
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
CLANG=${BPF_CLANG:-clang-19}
BPFTOOL=${BPFTOOL:-$(command -v bpftool || echo /usr/sbin/bpftool)}

step 2 "build samples/ with probes ($CLANG, make hook; linked programs via bpf-sdt link)"
make -s -C samples BPF_CLANG="$CLANG" BPF_SDT_OUTDIR=build
objs=$(make -s -C samples objects BPF_SDT_OUTDIR=build)

step 3 "bpf-sdt check"
(cd samples && bpf-sdt check $objs && echo "all $(wc -w <<<"$objs") objects well-formed")

step 4 "bpf-sdt list"
(cd samples && bpf-sdt list $objs)

step 5 "load into the kernel verifier"
set +e
(cd samples && ../scripts/load.sh $objs)
rc=$?
set -e
if [[ $rc -eq 3 ]]; then
	echo "bpf() is not permitted here (not root): built, checked and listed only"
	echo
	echo "demo finished in $(( $(date +%s) - start ))s"
	exit 0
fi
[[ $rc -eq 0 ]] || exit $rc

cd samples/build
# Packets for the test runs, one per path through xdp_parser.bpf.c.
python - <<'EOF'
import struct
from bpf_sdt.trace.pcap import write_pcap

def eth(ethertype, payload):
    return bytes.fromhex("020000000002020000000001") + struct.pack(">H", ethertype) + payload

def ipv4(payload=b"", ttl=64, ihl=5, proto=17):
    hdr = struct.pack(">BBHHHBBH4s4s", 0x40 | ihl, 0, 20 + len(payload), 0, 0, ttl, proto, 0,
                      bytes([127, 77, 0, 1]), bytes([127, 77, 0, 2]))
    return hdr + payload

udp = struct.pack(">HHHH", 40000, 53, 12, 0) + b"demo"
packets = {
    "udp": eth(0x0800, ipv4(udp)),                      # ipv4, passed
    "ttl1": eth(0x0800, ipv4(udp, ttl=1)),              # ipv4, dropped: TTL
    "ipv6": eth(0x86DD, bytes(40)),                     # non_ip
    "short": eth(0x0800, bytes(6)),                     # dropped: short IP header
    "bad_ihl": eth(0x0800, ipv4(udp, ihl=3)),           # dropped: bad IHL
}
for name, pkt in packets.items():
    open(f"demo_{name}.bin", "wb").write(pkt)
write_pcap("demo.pcap", packets.values())
EOF

step 6 "bpf-sdt instrument with the recorder, and load the result"
bpf-sdt instrument xdp_parser.bpf.o -o xdp_parser.recorded.bpf.o
echo "xdp_parser.recorded.bpf.o: every probe site now calls the recorder (its maps pin where the loader says)"
../../scripts/load.sh xdp_parser.recorded.bpf.o

step 7 "bpf-sdt instrument --observer observer.bpf.o: count_drop counts drops per reason"
bpf-sdt instrument xdp_parser.bpf.o --observer observer.bpf.o -o xdp_parser.counted.bpf.o
pins=$(mktemp -d /tmp/bpf-sdt-demo-XXXXXX)    # a private bpffs: nothing lands in /sys/fs/bpf
trap 'umount "$pins" 2>/dev/null || true; rmdir "$pins" 2>/dev/null || true' EXIT
mount -t bpf bpf "$pins"
mkdir "$pins/maps"
"$BPFTOOL" prog loadall xdp_parser.counted.bpf.o "$pins/progs" pinmaps "$pins/maps" 2>/dev/null
for name in udp ttl1 ipv6 short bad_ihl; do
	printf '%-8s ' "$name:"
	"$BPFTOOL" prog run pinned "$pins/progs/xdp_parse" data_in "demo_$name.bin" repeat 3 | head -1
done
echo "bpftool map dump pinned .../drops_by_reason (non-zero entries):"
"$BPFTOOL" -j map dump pinned "$pins/maps/drops_by_reason" | python -c '
import json, sys
for e in json.load(sys.stdin):
    key, v = e["formatted"]["key"], e["formatted"]["value"]
    if v["packets"]:
        print("  reason %d: %d packets, %d bytes" % (key, v["packets"], v["bytes"]))'
umount "$pins"

step 8 "bpf-sdt trace: the probes firing on packets, each argument as its declared type"
echo "\$ bpf-sdt trace xdp_parser.bpf.o --run xdp_parse --pcap demo.pcap"
bpf-sdt trace xdp_parser.bpf.o --run xdp_parse --pcap demo.pcap
echo
echo "\$ bpf-sdt trace wide_probe.bpf.o --run xdp_flow --packet demo_udp.bin     # 12 arguments"
bpf-sdt trace wide_probe.bpf.o --run xdp_flow --packet demo_udp.bin

step 9 "in the kernel: a filtered trace, and histograms of 1000 runs per packet (docs/aggregate.md)"
echo "\$ bpf-sdt trace xdp_parser.bpf.o --run xdp_parse --pcap demo.pcap --filter 'drop:arg0 == DROP_TTL || arg1 < 40'"
bpf-sdt trace xdp_parser.bpf.o --run xdp_parse --pcap demo.pcap --filter 'drop:arg0 == DROP_TTL || arg1 < 40'
echo
echo "\$ bpf-sdt trace xdp_parser.bpf.o --run xdp_parse --pcap demo.pcap --repeat 1000 \\"
echo "      --count-by drop:arg0 --hist ipv4:arg3 --lhist 'ipv4:arg2,0,256,32'"
bpf-sdt trace xdp_parser.bpf.o --run xdp_parse --pcap demo.pcap --repeat 1000 \
	--count-by drop:arg0 --hist ipv4:arg3 --lhist 'ipv4:arg2,0,256,32'

step 10 "bpf-sdt trace --live: xdp_parser loaded by iproute2 (ip link ... xdp obj) on a veth, traced while it runs"
python - <<'EOF'
import contextlib, json, signal, subprocess, sys
sys.path.insert(0, "../../tests")
from netns import Iproute2PinDirs, VethPair   # veth pair in two namespaces, loopback-range addresses

# `ip link ... xdp obj` makes iproute2's pin directories (/sys/fs/bpf/tc, ip,
# xdp) when they are missing; the ones it made here go again at the end.
pin_dirs = Iproute2PinDirs()

def ns(net, *cmd):
    return ["nsenter", f"--net=/run/netns/{net.receiver.netns}", *cmd]

def xdp_id(net):
    link = json.loads(subprocess.check_output(ns(net, "ip", "-j", "link", "show", net.receiver.iface)))[0]
    return link.get("xdp", {}).get("prog", {}).get("id")

with contextlib.ExitStack() as cleanup, VethPair() as net:
    cleanup.callback(pin_dirs.remove_new)     # after the veth pair and its program are gone
    where = f"xdp:{net.receiver.iface}"
    subprocess.run(ns(net, "ip", "link", "set", "dev", net.receiver.iface, "xdp", "obj", "xdp_parser.bpf.o",
                      "sec", "xdp"), check=True)
    print(f"$ ip link set dev {net.receiver.iface} xdp obj xdp_parser.bpf.o    # program id {xdp_id(net)}")
    print(f"$ bpf-sdt trace xdp_parser.bpf.o --live {where} --probe ipv4 --duration 2   (3 datagrams sent meanwhile)",
          flush=True)
    live = subprocess.Popen(ns(net, "bpf-sdt", "trace", "xdp_parser.bpf.o", "--live", where, "--probe", "ipv4",
                               "--duration", "2"), stderr=subprocess.PIPE)
    for line in live.stderr:
        sys.stdout.write(line.decode())
        sys.stdout.flush()
        if b"Ctrl-C to stop" in line:
            net.send_udp(3, 40100, b"demo")
    live.wait()
    print(f"program id {xdp_id(net)} runs there again")
    print("$ kill -9 a live trace, then bpf-sdt restore", flush=True)
    live = subprocess.Popen(ns(net, "bpf-sdt", "trace", "xdp_parser.bpf.o", "--live", where),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for line in live.stderr:
        if b"Ctrl-C to stop" in line:
            break
    live.send_signal(signal.SIGKILL)
    live.wait()
    print(f"after SIGKILL: program id {xdp_id(net)} (the instrumented copy) runs there", flush=True)
    subprocess.run(ns(net, "bpf-sdt", "restore", where), check=True)
    print(f"program id {xdp_id(net)} runs there again")
EOF
echo
echo "demo finished in $(( $(date +%s) - start ))s"
