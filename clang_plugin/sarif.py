"""`lint --format sarif`: SARIF 2.1.0, for GitHub code scanning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bpf_sdt import __version__
from bpf_sdt.model import Finding

from .lint import RULES

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
SARIF_VERSION = "2.1.0"
# Where each rule is explained: its row of docs/lint.md.
RULE_HELP_PREFIX = "docs/lint.md#"


def line_col(where: str) -> tuple[int, int]:
    """A finding's "line:column" (or "line") as numbers; (0, 0) when it has none."""
    parts = where.split(":")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return 0, 0


def sarif(findings: list[Finding]) -> dict[str, Any]:
    """The SARIF document of `findings`, with every rule lint has."""
    rules = [{"id": rid, "shortDescription": {"text": text},
              "defaultConfiguration": {"level": sev},
              "helpUri": RULE_HELP_PREFIX + rid.lower()} for rid, (sev, text) in RULES.items()]
    results = []
    for f in findings:
        line, col = line_col(f.where)
        results.append({"ruleId": f.rule, "level": f.severity, "message": {"text": f.message},
                        "locations": [{"physicalLocation": {
                            "artifactLocation": {"uri": Path(f.path).as_posix()},
                            "region": {"startLine": max(line, 1), "startColumn": max(col, 1)}}}]})
    return {"$schema": SARIF_SCHEMA, "version": SARIF_VERSION,
            "runs": [{"tool": {"driver": {"name": "bpf-sdt", "version": __version__, "rules": rules}},
                      "results": results}]}
