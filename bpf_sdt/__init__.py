"""bpf-sdt: statically defined tracing probes for BPF programs.

Stages, one module each, sharing the data model in :mod:`bpf_sdt.model`:

- generate:        :mod:`bpf_sdt.codegen.generate`  (the header, from Jinja2 templates)
- extract / lint:  :mod:`bpf_sdt.clang_plugin`      (BPF C through libclang)
- validate / list: :mod:`bpf_sdt.postlink.check`    (compiled or linked objects)
- link:            :mod:`bpf_sdt.postlink.link`     (static linking that keeps notes)
"""

__version__ = "0.1.0"
