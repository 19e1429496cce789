// SPDX-License-Identifier: GPL-2.0
/* A "production" loader that is not bpf-sdt, for tests/test_live.py: a
 * libbpf program built with gcc on a bpftool-generated skeleton of
 * live_xdp.bpf.o.  It attaches live_xdp to an interface by a BPF link (as
 * libbpf's bpf_program__attach_xdp does), prints "ready PROG_ID LINK_ID",
 * and keeps the link until stdin closes; then it prints the packet count of
 * every path and the .bss total, read through its own skeleton. */
#include <net/if.h>
#include <stdio.h>
#include <unistd.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include "live_xdp.skel.h"

static __u32 prog_id(int fd)
{
	struct bpf_prog_info info = {};
	__u32 len = sizeof(info);

	return bpf_obj_get_info_by_fd(fd, &info, &len) ? 0 : info.id;
}

static __u32 link_id(int fd)
{
	struct bpf_link_info info = {};
	__u32 len = sizeof(info);

	return bpf_obj_get_info_by_fd(fd, &info, &len) ? 0 : info.id;
}

int main(int argc, char **argv)
{
	struct live_xdp *skel;
	struct bpf_link *link;
	unsigned int ifindex;
	char buf[64];
	__u32 path;

	if (argc != 2 || !(ifindex = if_nametoindex(argv[1]))) {
		fprintf(stderr, "usage: %s IFACE\n", argv[0]);
		return 2;
	}
	skel = live_xdp__open_and_load();
	if (!skel) {
		perror("open_and_load");
		return 1;
	}
	link = bpf_program__attach_xdp(skel->progs.live_xdp, ifindex);
	if (!link) {
		perror("attach_xdp");
		live_xdp__destroy(skel);
		return 1;
	}
	printf("ready %u %u\n", prog_id(bpf_program__fd(skel->progs.live_xdp)), link_id(bpf_link__fd(link)));
	fflush(stdout);
	while (read(0, buf, sizeof(buf)) > 0)
		;
	for (path = 0; path < bpf_map__max_entries(skel->maps.path_counts); path++) {
		__u64 n = 0;

		bpf_map__lookup_elem(skel->maps.path_counts, &path, sizeof(path), &n, sizeof(n), 0);
		printf("path %u %llu\n", path, (unsigned long long)n);
	}
	printf("total %llu\n", (unsigned long long)skel->bss->total);
	bpf_link__destroy(link);
	live_xdp__destroy(skel);
	return 0;
}
