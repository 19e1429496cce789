"""Header generation: Jinja2 templates rendered into bpf_sdt.h."""
