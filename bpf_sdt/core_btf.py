"""The running kernel's BTF cut down to what one object's CO-RE relocations
use, given to libbpf as ``btf_custom_path`` so that loading the object again
need not read and parse the whole of ``/sys/kernel/btf/vmlinux`` (5 MB read
4 KB at a time, then indexed: about 10 ms here, most of a cached trace's
load).  ``bpftool gen min_core_btf`` writes it (BTFGen, which exists for
this); libbpf reads a custom BTF for CO-RE relocations only, so everything
else that needs the kernel's BTF (a tracing program's attach target, typed
ksyms) still gets the kernel's own.

When it is the same load.  bpftool resolves every relocation against the
kernel's BTF with libbpf's own candidate search and matching, and keeps the
types and members the results came from, so libbpf given the cut-down BTF
computes the same instructions: :func:`same_load` says whether that holds
for an object, and it does not when

- a relocation's type has no candidate in the kernel's BTF: libbpf would go
  on to the modules' BTF, which it does not search beside a custom BTF;
- a relocation asks for a type id in the kernel's BTF (TYPE_ID_TARGET,
  ``bpf_core_type_id_kernel``): a cut-down BTF numbers its types anew;
- a relocation is TYPE_MATCHES or of a kind newer than this module: its
  answer reads more of a type than bpftool is known to keep.

A candidate (libbpf's rule) is a type of the same kind (an enum and an
enum64 stand for each other) whose name equals the relocation's type's up
to a ``___flavor`` suffix.  The cut-down BTF holds only types bpftool
copied from the kernel's, so a candidate in it is one in the kernel's.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

VMLINUX_BTF = "/sys/kernel/btf/vmlinux"
BOOT_ID = "/proc/sys/kernel/random/boot_id"    # changes with each boot; the kernel's BTF cannot change within one
MAX_BOOT_ID = 64
MIN_CORE_BTF_TIMEOUT_S = 10.0        # bpftool takes 30 ms here, 70 ms on a 100,000-site copy
FLAVOR_SEP = "___"


def kernel_btf_identity() -> str | None:
    """What names the running kernel's BTF: this boot and the size of its
    BTF file; None without one (no CONFIG_DEBUG_INFO_BTF: libbpf has no
    kernel BTF to relocate against either)."""
    try:
        with open(BOOT_ID, "rb") as f:
            boot = f.read(MAX_BOOT_ID).strip().decode("ascii", errors="replace")
        size = os.stat(VMLINUX_BTF).st_size
    except OSError:
        return None
    return f"{boot}:{size}"


def min_core_btf_command(bpftool: str, obj: Path, out: Path) -> list[str]:
    return [bpftool, "gen", "min_core_btf", VMLINUX_BTF, os.fspath(out), os.fspath(obj)]


def essential_name(name: str) -> str:
    """A type's name without its ``___flavor`` suffix, by libbpf's rule: from
    the last ``___`` with a character other than ``_`` either side
    (``task_struct___old`` is ``task_struct``)."""
    for i in range(len(name) - len(FLAVOR_SEP) - 2, -1, -1):
        after = i + 1 + len(FLAVOR_SEP)
        if name[i] != "_" and name.startswith(FLAVOR_SEP, i + 1) and name[after] != "_":
            return name[:i + 1]
    return name


@functools.cache
def _kinds() -> tuple[frozenset[int], frozenset[int], frozenset[int]]:
    """(relocation kinds the cut-down BTF answers as the kernel's would,
    those that need no target type, the enum kinds): imported here, as
    same_load runs once an entry is written and a cached trace's start needs
    only kernel_btf_identity."""
    from bpf_sdt.btf import BtfKind
    from bpf_sdt.btfext import CoreReloKind

    same_answer = frozenset(CoreReloKind) - {CoreReloKind.TYPE_ID_TARGET, CoreReloKind.TYPE_MATCHES}
    return same_answer, frozenset({CoreReloKind.TYPE_ID_LOCAL}), frozenset({BtfKind.ENUM, BtfKind.ENUM64})


def _kind_class(kind: int) -> int:
    """A kind as libbpf compares candidates: an enum and an enum64 stand for each other."""
    enums = _kinds()[2]
    return min(enums) if kind in enums else kind


def same_load(obj_btf: bytes, obj_btf_ext: bytes | None, core_btf: bytes) -> bool:
    """Whether libbpf, given ``core_btf`` (bpftool's cut-down kernel BTF for
    this object) as its custom BTF, relocates the object (its ``.BTF`` and
    ``.BTF.ext``) as it would against the kernel's BTF (the module's
    docstring says when).  False when there is nothing to relocate (the
    custom BTF would save nothing) and for anything that does not parse."""
    from bpf_sdt.btf import parse_btf
    from bpf_sdt.btfext import BtfExt
    from bpf_sdt.errors import InputError

    if obj_btf_ext is None:
        return False
    same_answer, needs_no_target, _ = _kinds()
    try:
        local = parse_btf(obj_btf)
        relos = [rec for sec in BtfExt.parse(obj_btf_ext, local).sections.values() for rec in sec.core_relo]
        target = parse_btf(core_btf)
        candidates = {(essential_name(target.name_of(i)), _kind_class(target.kind_of(i))) for i in target.ids()}
        needed = set()
        for rec in relos:
            if rec.kind not in same_answer:
                return False
            if rec.kind not in needs_no_target:
                needed.add((essential_name(local.name_of(rec.type_id)), _kind_class(local.kind_of(rec.type_id))))
    except InputError:
        return False
    return bool(relos) and all(name and (name, kind) in candidates for name, kind in needed)
