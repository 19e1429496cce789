"""BPF_PROG_TEST_RUN of a raw tracepoint program: a context, no packet.

The kernel runs raw_tp programs on a context of at most 12 u64 arguments
and refuses any data buffer and any ``repeat`` (EINVAL), so each repeat is
one call of :meth:`Program.test_run` without data.
"""

from __future__ import annotations

from bpf_sdt.libbpf import LoadedProgram, RunResult

RAW_TP_TYPE = "raw_tracepoint"
MAX_ARGS = 12                   # MAX_BPF_FUNC_ARGS: the largest context the kernel accepts
CONTEXT = bytes(8 * MAX_ARGS)   # every argument 0: enough for any program that reads ctx[0..11]


def run_raw_tp(prog: LoadedProgram, repeat: int = 1) -> RunResult:
    """Runs ``prog`` ``repeat`` times (one call each) on a zeroed context."""
    retval = duration = 0
    for _ in range(repeat):
        run = prog.test_run(None, ctx=CONTEXT)
        retval, duration = run.retval, duration + run.duration_ns
    return RunResult(retval, b"", duration // max(repeat, 1))
