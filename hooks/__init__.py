"""Build-system hooks shipped with the package (make include file, meson helper)."""

from pathlib import Path


def hook_path(name: str) -> Path:
    return Path(__file__).parent / name
