"""BPF_PROG_TEST_RUN of a raw tracepoint program: a context, no packet.

The kernel runs raw_tp programs on a context of at most 12 u64 arguments
and refuses any data buffer and any ``repeat`` (EINVAL).  The libbpf
layer's :meth:`Program.test_run` always passes data buffers, so this module
makes the call itself, through the same libbpf and the same option struct
(``bpf_sdt.libbpf``'s private names: the struct layout that
tests/test_libbpf.py checks against the C headers is not duplicated here).
"""

from __future__ import annotations

import ctypes

from bpf_sdt.libbpf import Program, RunResult, _check, _lib, _opts, _TestRunOpts

RAW_TP_TYPE = "raw_tracepoint"
MAX_ARGS = 12                   # MAX_BPF_FUNC_ARGS: the largest context the kernel accepts
CONTEXT = bytes(8 * MAX_ARGS)   # every argument 0: enough for any program that reads ctx[0..11]


def run_raw_tp(prog: Program, repeat: int = 1) -> RunResult:
    """Runs ``prog`` ``repeat`` times (one call each) on a zeroed context."""
    ctx = ctypes.create_string_buffer(CONTEXT, len(CONTEXT))
    retval = duration = 0
    for _ in range(repeat):
        opts = _opts(_TestRunOpts, ctx_in=ctypes.addressof(ctx), ctx_size_in=len(CONTEXT))
        _check(f"test run of prog {prog.name!r}", _lib().bpf_prog_test_run_opts, prog.fd, ctypes.byref(opts))
        retval, duration = opts.retval, duration + opts.duration
    return RunResult(retval, b"", duration // max(repeat, 1))
