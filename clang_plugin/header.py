"""What bpf_sdt.h's expansion leaves in a translation unit, as the source
rules read it: the macros users write, the names the header declares per
probe and per site, and the words of its `_Static_assert`s.

The header (codegen/templates/bpf_sdt.h.j2) spells these for the compiler;
this module spells them once for `extract` and `lint`, and every rule case
in tests/test_lint.py fails if the two drift apart.  The object-level names
(notes, entry symbols, prototype variables) are the core's (bpf_sdt.format).
"""

from __future__ import annotations

import re

# BPF_SDT_PROBE<n>(name, args...) and BPF_SDT_DECLARE<n>(name, types...).
MACRO_PREFIX = "BPF_SDT_"
PROBE, DECLARE = "PROBE", "DECLARE"
_FAMILIES = f"{PROBE}|{DECLARE}"
# Per probe: __bpf_sdt_<name>_argK_t typedefs and the __bpf_sdt_<name>_nargs enumerator.
INTERNAL_PREFIX = "__bpf_sdt_"
# Per site: its own variables, __sdt_vK holding argument K.
SITE_PREFIX = "__sdt_"
SITE_ARG_VAR = SITE_PREFIX + "v"
# Every message of the header's _Static_asserts starts with this.
ASSERT_PREFIX = "bpf_sdt:"
# The words of a declaration's assertions (a site's name the probe instead).
DECLARATION_ASSERT = "declared type"

# Compiler errors the header raises on purpose; the rules say the same
# thing with a rule id, so these are not repeated as SDT000.
OWN_ERRORS = (ASSERT_PREFIX, INTERNAL_PREFIX, SITE_PREFIX)

MACRO_RE = re.compile(rf"^{MACRO_PREFIX}({_FAMILIES})(\d*)$")
ARITY_MACRO_RE = re.compile(rf"^{MACRO_PREFIX}({_FAMILIES})(\d+)$")
PROBE_MACRO_RE = re.compile(rf"^{MACRO_PREFIX}{PROBE}(\d*)$")
EXPANDED_FROM_MACRO_RE = re.compile(rf"expanded from macro '{MACRO_PREFIX}(?:{_FAMILIES})\d*'")

ARG_TYPEDEF_RE = re.compile(rf"^{INTERNAL_PREFIX}(\w+)_arg(\d+)_t$")
NARGS_RE = re.compile(rf"^{INTERNAL_PREFIX}(\w+)_nargs$")
UNDECLARED_RE = re.compile(rf"undeclared identifier '{INTERNAL_PREFIX}\w+_nargs'")
SITE_VAR_RE = re.compile(rf"^{SITE_ARG_VAR}(\d+)$")

# A site's assertions name the probe; the one checking the count also names
# the macro ("... than BPF_SDT_PROBE3 passes"); the others give the reason
# after the probe (and argument).
SITE_ASSERT_RE = re.compile(rf"^\"{ASSERT_PREFIX} probe '([^']*)'")
NARGS_ASSERT_RE = re.compile(rf"{MACRO_PREFIX}{PROBE}(\d+) passes\"$")
ASSERT_REASON_RE = re.compile(rf"{ASSERT_PREFIX} probe '[^']*'(?: argument \d+)?: (.*)")
