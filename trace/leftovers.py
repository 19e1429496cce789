"""What `--tc` leaves in the kernel if trace is killed, made findable: a
record (bpf_sdt.records, docs/records.md) taken before the qdisc or filter
exists, holding trace's program pinned, the hook, and whether trace created
the clsact qdisc.  `bpf-sdt restore` removes exactly that (trace/restore.py).

The record is also the lock of one tc hook direction: a second `--tc`
trace on it is refused (the newer filter would shadow the older, and the
older's exit would take the newer's qdisc with it).  `--xdp` and
auto-attached programs are held by links, which the kernel detaches when
the process dies, whatever kills it: they need no record.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TextIO

from bpf_sdt import kernel, records
from bpf_sdt.errors import InputError, escape_text
from bpf_sdt.libbpf import LibbpfError, LoadedProgram, TcFilter, ifindex, tc_remove_clsact

TC_DIRECTIONS = ("ingress", "egress")


def report_stale(err: TextIO) -> None:
    """One line naming what killed traces left, if anything."""
    left = [rec.where if rec is not None else key for key, rec in records.stale()]
    if left:
        err.write(f"bpf-sdt trace: {len(left)} killed trace{'s' if len(left) != 1 else ''} left kernel state "
                  f"({escape_text(', '.join(left))}); run `bpf-sdt restore`\n")


class RecordedTcFilter:
    """trace's --tc filter with its record; destroy() removes both, and the
    clsact qdisc if trace created it and no filter of anyone is left on it."""

    def __init__(self, filt: TcFilter, held: records.Held | None, created_qdisc: bool) -> None:
        self._filter, self._held, self._created_qdisc = filt, held, created_qdisc
        self._done = False
        filt.keep_qdisc()               # removed here, only if nobody else uses it

    def destroy(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            self._filter.destroy()
            if self._created_qdisc and qdisc_unused(self._filter.interface):
                tc_remove_clsact(self._filter.interface)
        finally:
            if self._held is not None:
                self._held.remove()


def qdisc_unused(iface: str | int) -> bool:
    """No filter of any classifier on either side of the clsact qdisc."""
    name = iface if isinstance(iface, str) else str(iface)
    return not any(kernel.tc_filter_listing(name, d) for d in TC_DIRECTIONS)


def attach_tc(prog: LoadedProgram, iface: str, direction: str, err: TextIO, prog_path: str) -> RecordedTcFilter:
    """Attaches `prog` (of the object at `prog_path`, in trace's temporary
    directory) as --tc does, recorded first; refuses a hook another trace
    holds; warns about filters that run before ours."""
    where = f"tc:{iface}:{direction}"
    hook = kernel.ClsBpf(iface, ifindex(iface), direction, 0, 0, kernel.netns_inode())
    key = records.record_key("tc", hook.netns, hook.ifindex, direction)
    created_qdisc = not kernel.has_clsact(iface)
    try:
        held = records.create(records.Record(key=key, kind="attach", where=where, hook=hook.to_dict(),
                                             extra={"created_qdisc": created_qdisc}))
    except records.RecordsUnavailable as e:
        err.write(f"bpf-sdt trace: warning: {e}; if trace is killed, its filter cannot be found later\n")
        return RecordedTcFilter(prog.attach_tc(iface, direction), None, created_qdisc)
    except records.RecordBusy as busy:
        rec = busy.record
        if rec is not None and rec.alive():
            raise InputError(f"--tc {escape_text(iface)}:{direction}: another bpf-sdt trace (pid {rec.pid}) has "
                             "its filter there; one --tc trace per interface and direction") from None
        raise InputError(f"--tc {escape_text(iface)}:{direction}: a trace that was killed left its filter there "
                         f"({records.root() / key}); run `bpf-sdt restore` first") from None
    try:
        held.pin(records.INSTRUMENTED_PIN, prog.fd)     # restore finds our filter by this program
        filt = prog.attach_tc(iface, direction)
        hook.handle, hook.priority = filt.handle, filt.priority
        held.write(hook=hook.to_dict(), state="attached", created_qdisc=created_qdisc, tmp=str(Path(prog_path).parent))
    except BaseException:
        if created_qdisc:
            with contextlib.suppress(LibbpfError):   # the failure itself is what to report
                if kernel.has_clsact(iface) and qdisc_unused(iface):
                    tc_remove_clsact(iface)
        held.remove()
        raise
    _warn_earlier_filters(iface, direction, hook, err)
    return RecordedTcFilter(filt, held, created_qdisc)


def _warn_earlier_filters(iface: str, direction: str, ours: kernel.ClsBpf, err: TextIO) -> None:
    earlier = [f for f in kernel.tc_filter_listing(iface, direction)
               if "options" in f and int(f.get("pref", 0)) < ours.priority]
    if earlier:
        prefs = sorted({int(f.get("pref", 0)) for f in earlier})
        err.write(f"bpf-sdt trace: warning: {len(earlier)} other filter{'s' if len(earlier) != 1 else ''} on "
                  f"{escape_text(iface)} {direction} run before ours (priority {', '.join(map(str, prefs))} < "
                  f"{ours.priority}): packets they end never reach the traced program\n")

