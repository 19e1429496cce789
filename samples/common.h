/* Shared includes for the samples: vmlinux.h and libbpf's headers, the way
 * real BPF projects build, plus bpf_sdt.h from `bpf-sdt cflags`. */
#ifndef SAMPLES_COMMON_H
#define SAMPLES_COMMON_H
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_tracing.h>
#include <bpf_sdt.h>

#define ETH_P_IP	0x0800
#define TC_ACT_OK	0
#endif
