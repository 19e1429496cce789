"""Arguments and entry point of `bpf-sdt trace` (placeholder until the runner lands)."""

from __future__ import annotations

import argparse

from bpf_sdt.errors import UsageError


def add_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("object", metavar="OBJ")


def run_trace(args: argparse.Namespace) -> int:
    raise UsageError("trace is not implemented yet")
