"""Build-system hooks shipped with the package: the make include file
(bpf_sdt.mk, printed by `bpf-sdt makefile`) and the meson helper
(bpf_sdt_meson.py, printed by `bpf-sdt meson`)."""

from pathlib import Path

MAKE_HOOK = "bpf_sdt.mk"
MESON_HELPER = "bpf_sdt_meson.py"


def hook_path(name: str) -> Path:
    return Path(__file__).parent / name


def meson_recipe() -> str:
    """The helper's documentation (its docstring, the meson.build recipe
    included), for `bpf-sdt meson --help`: written once, in the helper that
    ships with the package, and read without importing it."""
    text = hook_path(MESON_HELPER).read_text()
    start = text.index('"""') + 3
    return text[start:text.index('"""', start)].strip()


def run_meson_path() -> int:
    """`bpf-sdt meson`: the helper's path, for meson's find_program()."""
    print(hook_path(MESON_HELPER))
    return 0
