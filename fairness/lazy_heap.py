"""The min-heap with lazy updates that VTC and Equinox index their backlogged tenants with. Pure."""
from __future__ import annotations

import heapq
from collections.abc import Iterable


class LazyHeap:
    """A min-heap of (key, order) per name with lazy updates: O(log n) amortised set/discard/top.

    A name has at most one live heap entry, whose key is a lower bound of the name's current
    key. A key that goes up only records the new value (the entry is still a lower bound); the
    entry is re-keyed when it reaches the top. A key that goes down pushes a new entry and the
    old one becomes stale; stale entries are dropped when they reach the top, or all at once
    when the heap holds more than twice the names present. A discarded name keeps its entry
    until it reaches the top, so a name that comes back soon with a key no lower costs no push.
    `top` returns the exact minimum of (current key, order) over the names present.
    """

    __slots__ = ("heap", "live", "current", "_seq")

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, int, str]] = []
        self.live: dict[str, tuple[float, int, int]] = {}  # name -> (key in heap, order, seq)
        self.current: dict[str, float] = {}  # names present -> current key (>= the key in the heap)
        self._seq = 0

    def set(self, name: str, key: float, order: int) -> None:
        entry = self.live.get(name)
        self.current[name] = key
        if entry is not None and key >= entry[0] and order == entry[1]:
            return  # the heap entry is still a lower bound: re-keyed lazily in top()
        self._seq += 1
        self.live[name] = (key, order, self._seq)
        heapq.heappush(self.heap, (key, order, self._seq, name))
        if len(self.heap) > 2 * len(self.current) + 64:
            self.compact()

    def discard(self, name: str) -> None:
        self.current.pop(name, None)  # its entry goes when it surfaces (or when set() revives it)

    def top(self) -> tuple[float, str] | None:
        heap, live, current = self.heap, self.live, self.current
        while heap:
            key, order, seq, name = heap[0]
            entry = live.get(name)
            if entry is None or entry[2] != seq:
                heapq.heappop(heap)  # stale
                continue
            now = current.get(name)
            if now is None:  # discarded
                del live[name]
                heapq.heappop(heap)
                continue
            if now > key:  # an outdated lower bound: re-key it and look again
                self._seq += 1
                live[name] = (now, order, self._seq)
                heapq.heapreplace(heap, (now, order, self._seq, name))
                continue
            return key, name
        return None

    def compact(self) -> None:
        live = self.live
        self.rebuild([(n, k, live[n][1]) for n, k in self.current.items()])

    def rebuild(self, keys: Iterable[tuple[str, float, int]]) -> None:
        """Replace every entry: `keys` yields (name, key, order)."""
        live: dict[str, tuple[float, int, int]] = {}
        current: dict[str, float] = {}
        heap = []
        seq = self._seq
        for name, key, order in keys:
            seq += 1
            live[name] = (key, order, seq)
            current[name] = key
            heap.append((key, order, seq, name))
        heapq.heapify(heap)
        self._seq, self.heap, self.live, self.current = seq, heap, live, current

    def __len__(self) -> int:
        return len(self.current)
