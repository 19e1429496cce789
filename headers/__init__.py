"""The generated bpf_sdt.h, installed with the package (`bpf-sdt cflags`)."""

from pathlib import Path


def header_dir() -> Path:
    """The directory to pass with -I so that `#include <bpf_sdt.h>` works."""
    return Path(__file__).parent
