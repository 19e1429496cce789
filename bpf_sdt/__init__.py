"""bpf-sdt: statically defined tracing probes for BPF programs.

The public Python API (docs/api.md) is what this package exports: open an
object and iterate its probes and sites with typed arguments
(:func:`open_object`), instrument it (:func:`instrument_object`: the name
``instrument`` is the subpackage's, which any import of the stage would set
on this package), test-run a program and read its probes' events
(:func:`trace_run`).  Nothing else is API; tools should not import the
submodules.  The names resolve on first use, so the command line, which
imports this package, pays nothing for them.

Stages, one module each, sharing the data model in :mod:`bpf_sdt.model`:

- generate:        :mod:`bpf_sdt.codegen.generate`  (the header, from Jinja2 templates)
- extract / lint:  :mod:`bpf_sdt.clang_plugin`      (BPF C through libclang)
- validate / list: :mod:`bpf_sdt.postlink.check`    (compiled or linked objects)
- link:            :mod:`bpf_sdt.postlink.link`     (static linking that keeps notes)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from bpf_sdt.api import (
        Argument,
        BpfSdtError,
        Event,
        Finding,
        Instrumented,
        InstrumentedSite,
        Probe,
        ProgramRun,
        SdtObject,
        Site,
        TraceResult,
        instrument_object,
        open_object,
        trace_run,
    )

__all__ = [
    "Argument",
    "BpfSdtError",
    "Event",
    "Finding",
    "Instrumented",
    "InstrumentedSite",
    "Probe",
    "ProgramRun",
    "SdtObject",
    "Site",
    "TraceResult",
    "__version__",
    "instrument_object",
    "open_object",
    "trace_run",
]


def __getattr__(name: str) -> Any:
    """The API's names, imported from bpf_sdt.api when first asked for."""
    if name in __all__ and name != "__version__":
        from bpf_sdt import api

        return getattr(api, name)
    raise AttributeError(f"module 'bpf_sdt' has no attribute {name!r}")
