"""Constants of the on-disk format (normative text: docs/format.md).

Everything that reads or writes notes imports these; nothing else spells them.
The recorder's map names are part of the on-disk contract too; they are defined
with the rest of the recorder's contract in :mod:`bpf_sdt.recorder_abi` and
re-exported here.
"""

from collections.abc import Iterable

from bpf_sdt.insn import INSN_SIZE, JMP, JMP_JA, LDX, MODE_MEM, MOV64_K, MOV64_X, R10, SIZE_BYTES
from bpf_sdt.recorder_abi import RECORDER_COUNTERS as RECORDER_COUNTERS
from bpf_sdt.recorder_abi import RECORDER_COUNTS_MAP as RECORDER_COUNTS_MAP
from bpf_sdt.recorder_abi import RECORDER_DEFAULT_RINGBUF_SIZE as RECORDER_DEFAULT_RINGBUF_SIZE
from bpf_sdt.recorder_abi import RECORDER_IDENTITY_HEX as RECORDER_IDENTITY_HEX
from bpf_sdt.recorder_abi import RECORDER_IDENTITY_PREFIX as RECORDER_IDENTITY_PREFIX
from bpf_sdt.recorder_abi import RECORDER_RINGBUF_MAP as RECORDER_RINGBUF_MAP

FORMAT_VERSION = 1

NOTES_SECTION = ".bpf_sdt_notes"
NOTES_REL_SECTION = ".rel" + NOTES_SECTION
TYPES_SECTION = ".debug_bpf_sdt_types"
ENTRY_SYMBOL_PREFIX = "___sdt_jt_"
TYPE_VAR_PREFIX = "__sdt_type_"
DECL_TAG_PREFIX = "bpf_sdt:"

MAX_ARGS = 12          # MAX_BPF_FUNC_ARGS: what a trampoline can pass
NAMED_ARGS = 5         # args 1..5 name their BPF argument register: `rK = ...`
REG_ARGS = 10          # r0..r9: at most 10 arguments of a site can be registers.  clang
                       # puts args 11..12 in registers too while the site's immediates
                       # leave room, else in stack slots (docs/header.md)
STRICT_MAX_ARGS = 5    # the RFC encoding (BPF_SDT_STRICT)
INSN_ARRAY_MAX = 256   # entries per BPF_MAP_TYPE_INSN_ARRAY in the RFC consumer

NOP_INSN = bytes([JMP | JMP_JA]) + bytes(INSN_SIZE - 1)   # goto +0 (BPF_JMP|BPF_JA, off 0): 05 00 00 00 00 00 00 00

# The address word's relocation is elf.R_BPF_64_ABS64, or this number for it:
R_BPF_64_ABS64_OLD_BINUTILS = 12   # what binutils <= 2.40 (bpf-gcc 12) writes

# Argument insn opcodes, spelled from insn.py's opcode fields.
OP_MOV64_X = MOV64_X   # BPF_ALU64 | BPF_MOV | BPF_X: value in src_reg
OP_MOV64_K = MOV64_K   # BPF_ALU64 | BPF_MOV | BPF_K: value is the s32 imm
OP_LDX = {LDX | MODE_MEM | size: nbytes for size, nbytes in SIZE_BYTES.items()}   # a stack slot's load -> bytes
FRAME_REG = R10


def entry_symbol_probe_name(symbol: str) -> str | None:
    """The probe name an entry symbol names, or None if it is no entry symbol.

    ``___sdt_jt_<name>`` (the first site in a translation unit, the RFC's form)
    or ``___sdt_jt_<name>.<n>``: C identifiers cannot contain '.', so the name
    ends at the first one.
    """
    if not symbol.startswith(ENTRY_SYMBOL_PREFIX):
        return None
    return entry_symbols_probe_names((symbol,))[0] or None


def entry_symbols_probe_names(symbols: Iterable[str]) -> list[str]:
    """The probe name of each of ``symbols``, entry symbols all ("" where
    the name is empty): :func:`entry_symbol_probe_name`'s rule in one loop,
    for the notes decoder, which has a symbol per site."""
    start = len(ENTRY_SYMBOL_PREFIX)
    return [symbol[start:].partition(".")[0] for symbol in symbols]


# instrument records the first instruction of each call it inserts in CALLS_SECTION
# (docs/format.md section 6): an address word per call, at a local STT_NOTYPE symbol
# CALL_LABEL_PREFIX + observer; list reads them back.  The section is not loaded
# (no SHF_ALLOC), so loaders ignore it; a label in a code section would look like
# a function to some (cilium/ebpf 0.9).
CALL_LABEL_PREFIX = "___sdt_call_"
CALLS_SECTION = ".bpf_sdt_calls"
CALLS_REL_SECTION = ".rel" + CALLS_SECTION
CALL_WORD_SIZE = 8
