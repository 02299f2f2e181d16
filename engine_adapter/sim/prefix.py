"""The simulated engine's prefix cache: an LRU of Mooncake ``hash_ids`` (docs/simulator.md).

One id per ``block_size``-token block of the prompt (the last block may be partial). At admission
the longest run of leading ids present is a hit (at most prompt - 1 tokens: one token is always
computed); a request's blocks enter the cache when its prefill completes. The cache is accounted
apart from the KV pool.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence


class PrefixCache:
    def __init__(self, block_size: int, capacity_blocks: int) -> None:
        self.block_size = block_size
        self.capacity = capacity_blocks  # 0: disabled
        self._lru: OrderedDict[int, None] = OrderedDict()

    def _blocks(self, ids: Sequence[int], prompt_tokens: int) -> list[int]:
        """Token counts of the prompt's blocks that have an id."""
        bs = self.block_size
        n = min(len(ids), -(-prompt_tokens // bs))
        return [min(bs, prompt_tokens - bs * i) for i in range(n)]

    def hit(self, ids: Sequence[int] | None, prompt_tokens: int) -> tuple[int, int]:
        """(cached tokens, blocks hit) for this prompt, without touching the LRU."""
        if not self.capacity or not ids:
            return 0, 0
        lru = self._lru
        tokens = blocks = 0
        for hid, size in zip(ids, self._blocks(ids, prompt_tokens)):
            if hid not in lru:
                break
            tokens += size
            blocks += 1
        return min(tokens, prompt_tokens - 1), blocks

    def touch(self, ids: Sequence[int]) -> None:
        """A hit refreshes its blocks."""
        for hid in ids:
            self._lru.move_to_end(hid)

    def insert(self, ids: Sequence[int] | None, prompt_tokens: int) -> None:
        """A completed prefill's blocks enter (or refresh) the cache; the least recent fall out."""
        if not self.capacity or not ids:
            return
        lru = self._lru
        for hid in ids[: len(self._blocks(ids, prompt_tokens))]:
            if hid in lru:
                lru.move_to_end(hid)
            else:
                lru[hid] = None
        while len(lru) > self.capacity:
            lru.popitem(last=False)

    def __contains__(self, hid: int) -> bool:
        return hid in self._lru

    def __len__(self) -> int:
        return len(self._lru)
