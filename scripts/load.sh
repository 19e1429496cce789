#!/usr/bin/env bash
# load.sh OBJ...: load each object into the kernel verifier with bpftool and
# print "OBJ: loaded (processed N insns)" per object.  Exit 0 if all loaded,
# 1 if one was rejected, 3 if this process may not use bpf() at all.
set -uo pipefail
BPFTOOL=${BPFTOOL:-$(command -v bpftool || echo /usr/sbin/bpftool)}
if [[ $(id -u) -ne 0 ]]; then
	echo "load: bpf() needs root (CAP_BPF): skipping the kernel verifier step" >&2
	exit 3
fi
mountpoint -q /sys/fs/bpf 2>/dev/null || mount -t bpf bpf /sys/fs/bpf 2>/dev/null
rc=0
for obj in "$@"; do
	pin=/sys/fs/bpf/bpf_sdt_$$_$(basename "$obj" | tr -c 'a-zA-Z0-9_\n' _)
	log=$("$BPFTOOL" -d prog loadall "$obj" "$pin" 2>&1)
	status=$?
	rm -rf "$pin"
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
