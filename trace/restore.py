"""`bpf-sdt restore [WHERE]`: undo what killed traces left in the kernel,
from their records (bpf_sdt.records, docs/records.md).

- a live swap (``--live``): the original goes back, expecting the
  instrumented copy there (the same swap trace makes at its end); if a third
  program runs there now, it stays;
- an attachment of ``--tc``: the filter goes, if it still runs trace's
  program, and the clsact qdisc too if trace created it and it is empty.

Records of traces that still run are left alone.  A record is removed,
and with it the pins that kept its programs alive, once its outcome is
known (put back, already original, a third program there, the attach point
or namespace gone); one whose restore failed is kept, and restore exits 1.
"""

from __future__ import annotations

import errno
import sys
from typing import TextIO

from bpf_sdt import kernel, records
from bpf_sdt.errors import EXIT_FINDINGS, EXIT_OK, BpfSdtError, escape_text
from bpf_sdt.kernel import Replaced
from bpf_sdt.libbpf import LibbpfError, ifindex, tc_detach, tc_remove_clsact

TC_DIRECTIONS = ("ingress", "egress")


def restore(where: str | None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Restores every stale record (those of `where` only, if given); the exit code."""
    out, err = out or sys.stdout, err or sys.stderr
    wanted = _keys_of(where) if where else None
    code, done = EXIT_OK, 0
    for key in records.record_keys():
        rec = records.read(key)
        if wanted is not None and key not in wanted and (rec is None or rec.where != where):
            continue
        if rec is not None and rec.alive():
            out.write(f"{escape_text(rec.where)}: being traced (bpf-sdt pid {rec.pid}); left alone\n")
            continue
        if rec is None and records.starting(key):
            out.write(f"{key}: a trace is taking it (no record yet); left alone\n")
            continue
        ok, message = restore_record(key, rec)
        out.write(message + "\n")
        done += 1
        if not ok:
            code = EXIT_FINDINGS
    if not done:
        out.write("nothing to restore\n" if where is None else f"{escape_text(where)}: nothing to restore\n")
    return code


def _keys_of(where: str) -> set[str]:
    """The record keys WHERE names as it is now: the keys of its interface's
    hooks (--tc's, and --live's for XDP), and for a program or a filter the
    key of the hook it runs at."""
    from .live import find, parse_where

    place = parse_where(where, "WHERE")
    keys = set()
    if place.kind in ("xdp", "tc"):
        try:
            index = ifindex(place.target)
        except LibbpfError:
            return set()
        keys.add(records.record_key("xdp", kernel.netns_inode(), index) if place.kind == "xdp" else
                 records.record_key("tc", kernel.netns_inode(), index, place.direction))
    try:
        hook, _ = find(place, None)
    except BpfSdtError:
        return keys                     # nothing runs there now that a record could name
    try:
        keys.add(records.record_key(*hook.key()))
    finally:
        hook.close()
    return keys


KEPT = "record kept: run `bpf-sdt restore` again once it can be done"


def restore_record(key: str, rec: records.Record | None) -> tuple[bool, str]:
    """(whether the kernel is as before the trace, what was done).  The
    record, and with it the pin holding the original, is removed only when
    the outcome is known; a failure keeps it for another attempt."""
    what = escape_text(rec.where if rec is not None else key)
    try:
        ok, message, done = _restore(key, rec)
    except LibbpfError as e:
        kept = KEPT
        if e.errno == errno.ENODEV:     # deleted (trace's copy gone with it) or moved (it runs there)
            kept = (f"record kept: move the interface back and run `bpf-sdt restore` again, or if it was deleted "
                    f"(nothing of trace is left) remove {escape_text(str(records.root() / key))}")
        ok, message, done = False, f"{what}: {escape_text(str(e))}; {kept}", False
    except OSError as e:                # entering a network namespace, reading /proc
        ok, message, done = False, f"{what}: {escape_text(e.strerror or str(e))}; {KEPT}", False
    if done:
        if rec is not None:
            records.remove_tmp(rec)
        records.remove(key)
    return ok, message


def _restore(key: str, rec: records.Record | None) -> tuple[bool, str, bool]:
    """(ok, message, whether the record is done with and goes)."""
    if rec is None:
        return True, f"{key}: an incomplete record (the trace was killed while it began); removed", True
    netns = rec.hook.get("netns")
    if isinstance(netns, int) and kernel.netns_path(netns) is None:
        return True, (f"{escape_text(rec.where)}: its network namespace is gone, and with it everything "
                      "trace changed there; record removed"), True
    if rec.kind == "live":
        ok, message = _restore_swap(key, rec)
    else:
        ok, message = _restore_attach(key, rec)
    return ok, message, True


def _restore_swap(key: str, rec: records.Record) -> tuple[bool, str]:
    try:
        hook = kernel.hook_from_dict(rec.hook)
    except LibbpfError as e:
        if e.errno != errno.ENOENT:
            raise
        # A link or prog_array freed since (its loader ended): the copy runs nowhere.
        return True, f"{escape_text(rec.where)}: its attach point is gone, and the copy with it; record removed"
    try:
        with records.pinned_fd(key, records.ORIGINAL_PIN) as original, \
                records.pinned_fd(key, records.INSTRUMENTED_PIN) as instrumented:
            where = f"{escape_text(rec.where)} ({escape_text(hook.describe())})"
            now = hook.current()
            original_id = int(rec.extra.get("original_id", 0))
            if instrumented is not None and original is not None and now == kernel.prog_id_of_fd(instrumented):
                try:
                    hook.swap(original, instrumented)
                except Replaced as e:
                    return False, f"{where}: {e}, a third program; left in place, record removed"
                return True, f"{where}: the original program (id {original_id}) is back"
            if now == original_id:
                return True, f"{where}: runs the original program (id {original_id}) already"
            return False, (f"{where}: runs program id {now}, neither the original (id {original_id}) nor trace's "
                           "copy; left in place, record removed")
    finally:
        hook.close()


def _restore_attach(key: str, rec: records.Record) -> tuple[bool, str]:
    """A --tc trace's filter (found by trace's pinned program, whatever its
    handle: trace may have died before it wrote it) and the clsact qdisc it
    created, if nobody's filter is left on it."""
    hook = kernel.hook_from_dict(rec.hook)
    assert isinstance(hook, kernel.ClsBpf)
    where = f"{escape_text(rec.where)} of network namespace {hook.netns}"
    done = []
    with records.pinned_fd(key, records.INSTRUMENTED_PIN) as attached, kernel.entered_netns(hook.netns):
        ours = kernel.prog_id_of_fd(attached) if attached is not None else None
        for filt in kernel.cls_bpf_filters(hook.iface, hook.direction):
            if filt.prog_id == ours:
                tc_detach(hook.ifindex, hook.direction, filt.handle, filt.priority)
                done.append(f"trace's filter (priority {filt.priority}) removed")
        if rec.extra.get("created_qdisc") and kernel.has_clsact(hook.iface) and _no_filters(hook.iface):
            tc_remove_clsact(hook.ifindex)
            done.append("the clsact qdisc trace created removed")
    return True, f"{where}: {', '.join(done) or 'nothing of trace left'}"


def _no_filters(iface: str) -> bool:
    """No filter of any kind (bpf or not) on either side of the clsact."""
    return not any(kernel.tc_filter_listing(iface, d) for d in TC_DIRECTIONS)
