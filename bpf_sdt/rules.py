"""Rule tables: each rule id a command reports (lint's SDT0xx, check's
SDT1xx), with its severity and the one-line summary its docs row repeats.
A finding takes its severity from the table, so a rule is an error, a
warning or a note in one place."""

from __future__ import annotations

from typing import NamedTuple

from bpf_sdt.model import Finding, Severity


class Rule(NamedTuple):
    severity: Severity
    summary: str


# Rule id -> Rule, in the order the docs list them.
RuleTable = dict[str, Rule]


def rule_finding(table: RuleTable, rule: str, path: str, where: str, message: str) -> Finding:
    """`rule`'s finding at `where`, with the table's severity (an id the
    table lacks is a bug in the caller: KeyError)."""
    return Finding(path, where, table[rule].severity, message, rule)
