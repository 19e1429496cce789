"""The worklist every analysis of this stage iterates to its fixed point.

Liveness and initialisation (``analysis.py``), stack reach (``stackframe.py``)
and ctx taint (``ctxwrite.py``) each propagate a state along a function's
control-flow edges until nothing changes; what differs is the state and its
transfer, not how instructions are queued.  The order is last in, first out,
which each analysis relies on only for its running time (and stack reach,
which widens, for where it widens: its results are tested, not its order).
"""

from __future__ import annotations

from collections.abc import Iterable


class Worklist:
    """Instruction indices whose state changed and must be visited again;
    each index is queued at most once at a time."""

    __slots__ = ("_todo", "_queued")

    def __init__(self, size: int, initial: Iterable[int]) -> None:
        self._todo: list[int] = []
        self._queued = [False] * size
        self.push_all(initial)

    def __bool__(self) -> bool:
        return bool(self._todo)

    def push(self, i: int) -> None:
        if not self._queued[i]:
            self._queued[i] = True
            self._todo.append(i)

    def push_all(self, indices: Iterable[int]) -> None:
        """:meth:`push` of each, in order (one call for a whole list: the analyses
        queue every predecessor or successor of a changed instruction)."""
        todo, queued = self._todo, self._queued
        for i in indices:
            if not queued[i]:
                queued[i] = True
                todo.append(i)

    def pop(self) -> int:
        i = self._todo.pop()
        self._queued[i] = False
        return i
