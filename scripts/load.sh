#!/usr/bin/env bash
# load.sh OBJ...: load each object into the kernel verifier with bpftool and
# print "OBJ: loaded (processed N insns)" per object.  Exit 0 if all loaded,
# 1 if one was rejected, 3 if this process may not use bpf() at all.
#
# bpftool pins maps that ask for it (LIBBPF_PIN_BY_NAME, e.g. a recorder built
# with `instrument --pin-by-name`) under /sys/fs/bpf, and would reuse
# a map already pinned there.  So each load runs in a private mount namespace
# with a fresh bpffs over /sys/fs/bpf: its pins vanish with it, and the host's
# /sys/fs/bpf is never touched.  Without unshare(1), pins are removed by hand.
set -uo pipefail
BPFTOOL=${BPFTOOL:-$(command -v bpftool || echo /usr/sbin/bpftool)}
if [[ $(id -u) -ne 0 ]]; then
	echo "load: bpf() needs root (CAP_BPF): skipping the kernel verifier step" >&2
	exit 3
fi
private=0
if command -v unshare >/dev/null && unshare -m --propagation private true 2>/dev/null; then
	private=1
else
	mountpoint -q /sys/fs/bpf 2>/dev/null || mount -t bpf bpf /sys/fs/bpf 2>/dev/null
fi

loadall() {	# loadall OBJ PIN: bpftool's output, its exit status
	if [[ $private -eq 1 ]]; then
		unshare -m --propagation private sh -c \
			'mount -t bpf bpf /sys/fs/bpf && exec "$0" -d prog loadall "$1" "$2"' "$BPFTOOL" "$1" "$2" 2>&1
		return
	fi
	local before status
	before=$(ls /sys/fs/bpf)
	"$BPFTOOL" -d prog loadall "$1" "$2" 2>&1
	status=$?
	rm -rf "$2"
	for pin in $(comm -13 <(echo "$before" | sort) <(ls /sys/fs/bpf | sort)); do
		rm -f "/sys/fs/bpf/$pin"	# maps this load pinned by name
	done
	return $status
}

rc=0
for obj in "$@"; do
	pin=/sys/fs/bpf/bpf_sdt_$$_$(basename "$obj" | tr -c 'a-zA-Z0-9_\n' _)
	log=$(loadall "$obj" "$pin")
	status=$?
	insns=$(grep -E '^processed [0-9]+ insns' <<<"$log" | awk '{s += $2} END {print s + 0}')
	if [[ $status -eq 0 ]]; then
		echo "$obj: loaded (processed $insns insns)"
	else
		echo "$obj: REJECTED by the verifier" >&2
		grep -vE '^libbpf: (sec|elf|prog .*found|CO-RE|loading|looking|collected)' <<<"$log" | tail -15 >&2
		rc=1
	fi
done
exit $rc
