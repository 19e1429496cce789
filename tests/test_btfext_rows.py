"""`BtfExt.parse(records=False)`, what SourceLines reads (issue 22): the
same checks and errors as the full parse, and line rows with the fields of
its LineInfo records."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from test_btfext import HOSTILE, STRINGS, _synthetic, objects, samples  # noqa: F401  (fixtures)

from bpf_sdt.btfext import BtfExt
from bpf_sdt.elf import BpfObject, load_object
from bpf_sdt.errors import InputError
from bpf_sdt.notes import decode_notes


def rows_of(ext: BtfExt) -> dict[str, list[tuple[int, ...]]]:
    return {name: [(r.insn_off, r.file_name_off, r.line_off, r.line_col) for r in sec.line_info]
            for name, sec in ext.sections.items() if sec.line_info}


@pytest.mark.parametrize("core", [True, False])
def test_rows_of_larger_records_are_the_records_fields(core: bool) -> None:
    data = _synthetic(hdr_tail=b"\xaa" * (8 if core else 4), core=core)
    assert BtfExt.parse(data, STRINGS, records=False).line_rows == rows_of(BtfExt.parse(data, STRINGS))


def _with_btf_ext(paths: dict[str, Path]) -> Iterator[tuple[BpfObject, bytes]]:
    """Each object that has .BTF.ext and BTF, with the .BTF.ext bytes."""
    for path in paths.values():
        obj = load_object(path)
        sec = obj.section(".BTF.ext")
        if sec is not None and obj.btf is not None:
            yield obj, obj.section_data(sec)


def test_rows_of_every_object(objects: dict[str, Path]) -> None:  # noqa: F811
    for obj, raw in _with_btf_ext(objects):
        assert obj.btf is not None
        assert BtfExt.parse(raw, obj.btf, records=False).line_rows == rows_of(BtfExt.parse(raw, obj.btf))


@pytest.mark.parametrize("case", HOSTILE)
def test_the_same_error(case: str) -> None:
    mutate, _ = HOSTILE[case]
    data = mutate(_synthetic())
    with pytest.raises(InputError) as full:
        BtfExt.parse(data, STRINGS)
    with pytest.raises(InputError) as rows:
        BtfExt.parse(data, STRINGS, records=False)
    assert str(rows.value) == str(full.value)


def test_source_lines_agree_with_the_records(objects: dict[str, Path]) -> None:  # noqa: F811
    """SourceLines (rows) gives each site the place the LineInfo records give."""
    import os

    from bpf_sdt.btfext import SourceLines

    for obj, raw in _with_btf_ext(objects):
        assert obj.btf is not None
        ext = BtfExt.parse(raw, obj.btf)
        lines = SourceLines(obj)
        for e in decode_notes(obj).entries:
            rec = ext.line_index(e.section.name).at(e.offset)
            want = (None, None, None) if rec is None else \
                (os.path.normpath(ext.file_name(rec)), rec.line or None, rec.col or None)
            assert lines.at(e.section.name, e.offset) == want
            assert lines.places(e.section.name, [e.offset]) == [want]
