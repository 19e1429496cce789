// SPDX-License-Identifier: GPL-2.0
/* Tracing programs: tp_btf on sched_process_exec and on sys_enter (fentry
 * is refused by this machine's kernel, which has no ftrace trampolines).
 * Probe arguments come straight from BTF-typed kernel pointers. */
#include "common.h"

BPF_SDT_DECLARE3(exec, pid_t, pid_t, const struct linux_binprm *);	/* pid, old pid, binprm */
BPF_SDT_DECLARE3(syscall, long, unsigned long, unsigned long);		/* nr, arg0 (di), arg1 (si) */

SEC("tp_btf/sched_process_exec")
int BPF_PROG(on_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	BPF_SDT_PROBE3(exec, p->pid, old_pid, bprm);
	return 0;
}

SEC("tp_btf/sys_enter")
int BPF_PROG(on_sys_enter, struct pt_regs *regs, long id)
{
	BPF_SDT_PROBE3(syscall, id, regs->di, regs->si);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
