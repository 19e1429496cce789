"""Probe prototypes from an object's BTF, as typed argument descriptions.

The header declares each probe as ``static void (*const __sdt_type_<name>)
(types...)`` tagged ``bpf_sdt:<name>:<N>`` (docs/format.md): BTF
DECL_TAG -> VAR -> [CONST] -> PTR -> FUNC_PROTO.  Every stage that needs a
probe's argument types (check, list, instrument, trace) reads them here.
"""

from __future__ import annotations

import re

from bpf_sdt.argtype import ArgType, arg_types
from bpf_sdt.btf import Btf, BtfKind, BtfType
from bpf_sdt.format import DECL_TAG_PREFIX

# Use with fullmatch, never match with `$`: `$` also matches before a trailing newline.
TAG_RE = re.compile(r"bpf_sdt:([A-Za-z_][A-Za-z0-9_]*):(\d+)")


def tagged_prototype(btf: Btf, var_id: int) -> BtfType | None:
    """The FUNC_PROTO a probe tag's VAR points to (VAR -> [CONST] -> PTR -> FUNC_PROTO)."""
    var = btf.get(var_id)
    if var.kind != BtfKind.VAR:
        return None
    ptr = btf.resolve(var.type)
    if ptr.kind != BtfKind.PTR:
        return None
    proto = btf.resolve(ptr.type)
    return proto if proto.kind == BtfKind.FUNC_PROTO else None


def probe_types(btf: Btf | None) -> dict[str, tuple[ArgType, ...]]:
    """Probe name -> its arguments' types, for every well-formed tag (the
    first one of a name wins; `check` reports disagreeing duplicates)."""
    out: dict[str, tuple[ArgType, ...]] = {}
    if btf is None:
        return out
    for type_id in btf.ids(BtfKind.DECL_TAG):
        t = btf.get(type_id)
        if not t.name.startswith(DECL_TAG_PREFIX):
            continue
        m = TAG_RE.fullmatch(t.name)
        proto = tagged_prototype(btf, t.type) if m else None
        if m is None or proto is None or m.group(1) in out:
            continue
        out[m.group(1)] = arg_types(btf, proto.id)
    return out
