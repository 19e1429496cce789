"""Render ``bpf_sdt.h`` from the Jinja2 template in ``templates/``.

The template owns the C; this module only chooses what to render (the arity
range) and writes it.  ``headers/bpf_sdt.h`` is this output at the default
arity, committed; a test fails when the two drift apart.
"""

from __future__ import annotations

from pathlib import Path

import jinja2

from bpf_sdt import __version__
from bpf_sdt.errors import UsageError
from bpf_sdt.format import FORMAT_VERSION, MAX_ARGS, NAMED_ARGS, REG_ARGS, STRICT_MAX_ARGS

TEMPLATE_DIR = Path(__file__).parent / "templates"
HEADER_TEMPLATE = "bpf_sdt.h.j2"


def _prefixed(numbers: list[int], prefix: str) -> list[str]:
    return [f"{prefix}{n}" for n in numbers]


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # C, not HTML
    )
    env.filters["prefixed"] = _prefixed
    return env


def render_header(max_args: int = MAX_ARGS) -> str:
    """The header text with BPF_SDT_DECLARE0..N / BPF_SDT_PROBE0..N."""
    if not 0 <= max_args <= MAX_ARGS:
        raise UsageError(f"--max-args must be between 0 and {MAX_ARGS}, not {max_args}")
    template = _environment().get_template(HEADER_TEMPLATE)
    return template.render(
        arities=list(range(max_args + 1)),
        max_args=max_args,
        reg_args=REG_ARGS,
        named_args=NAMED_ARGS,
        strict_max=STRICT_MAX_ARGS,
        format_version=FORMAT_VERSION,
        version=__version__,
    )
