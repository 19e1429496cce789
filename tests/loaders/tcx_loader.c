// SPDX-License-Identifier: GPL-2.0
/* A loader that attaches live_tc.bpf.o's program as a tcx link (kernel 6.6+),
 * for tests/test_live.py.  libbpf 1.1 has no tcx API, so the link is made
 * with the generic bpf_link_create (target: the ifindex; attach type
 * BPF_TCX_INGRESS, a number newer than this libbpf's headers).  Prints
 * "ready PROG_ID LINK_ID" and keeps the link until stdin closes. */
#include <net/if.h>
#include <stdio.h>
#include <unistd.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#define ATTACH_TCX_INGRESS 46	/* enum bpf_attach_type: BPF_TCX_INGRESS */

static __u32 info_id(int fd, int is_link)
{
	struct bpf_prog_info prog = {};
	struct bpf_link_info link = {};
	__u32 len = is_link ? sizeof(link) : sizeof(prog);

	if (bpf_obj_get_info_by_fd(fd, is_link ? (void *)&link : (void *)&prog, &len))
		return 0;
	return is_link ? link.id : prog.id;
}

int main(int argc, char **argv)
{
	struct bpf_object *obj;
	struct bpf_program *prog;
	unsigned int ifindex;
	int prog_fd, link_fd;
	char buf[64];

	if (argc != 3 || !(ifindex = if_nametoindex(argv[2]))) {
		fprintf(stderr, "usage: %s OBJ IFACE\n", argv[0]);
		return 2;
	}
	obj = bpf_object__open_file(argv[1], NULL);
	if (!obj || bpf_object__load(obj)) {
		perror("load");
		return 1;
	}
	prog = bpf_object__find_program_by_name(obj, "live_tc");
	prog_fd = prog ? bpf_program__fd(prog) : -1;
	link_fd = bpf_link_create(prog_fd, ifindex, ATTACH_TCX_INGRESS, NULL);
	if (link_fd < 0) {
		perror("bpf_link_create tcx");
		bpf_object__close(obj);
		return 1;
	}
	printf("ready %u %u\n", info_id(prog_fd, 0), info_id(link_fd, 1));
	fflush(stdout);
	while (read(0, buf, sizeof(buf)) > 0)
		;
	close(link_fd);
	bpf_object__close(obj);
	return 0;
}
