"""Exit codes and the exceptions that map onto them.

Every command exits 0 when all is well, 1 when it has findings about its input,
and 2 when an input is unusable or the command line is wrong.  Code that meets
bad input raises :class:`InputError` with a one-line message; the CLI prints it
(through :func:`escape_text`) and exits 2, so no traceback ever reaches the user.
"""

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_UNUSABLE = 2


class BpfSdtError(Exception):
    """Base class: a one-line message meant for the user."""

    exit_code = EXIT_UNUSABLE


class InputError(BpfSdtError):
    """An input file cannot be used (not ELF, not BPF, truncated, unparsable)."""


class UsageError(BpfSdtError):
    """The command line asks for something impossible."""


class ToolError(BpfSdtError):
    """An external tool (bpftool, clang) is missing or failed."""


# Characters that could end a line, move the cursor or start a terminal escape
# sequence are not printable: shown as Python escapes (\n, \x1b, \u202e).
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_text(text: str) -> str:
    """``text`` with every non-printable character escaped, for text output.
    Names in objects (probes, sections, symbols) and paths may hold newlines
    and terminal escapes; printed raw they could forge output lines."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _ESCAPES.get(c) or _escape_char(c) for c in text)


def _escape_char(c: str) -> str:
    code = ord(c)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
