#!/bin/sh
# vmlinux.sh OUT PINNED: vmlinux.h from the running kernel's BTF where it
# exists, else the pinned copy (used by the make and meson builds alike).
set -e
if [ -r /sys/kernel/btf/vmlinux ] && command -v bpftool >/dev/null 2>&1; then
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > "$1.tmp"
else
	xz -dc "$2" > "$1.tmp"
fi
mv "$1.tmp" "$1"
