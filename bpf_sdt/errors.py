"""Exit codes and the exceptions that map onto them.

Every command exits 0 when all is well, 1 when it has findings about its input,
and 2 when an input is unusable or the command line is wrong.  Code that meets
bad input raises :class:`InputError` with a one-line message; the CLI prints it
and exits 2, so no traceback ever reaches the user.
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
