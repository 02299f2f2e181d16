"""Where sluice expects each prompt prefix to be cached: per engine, an LRU of the block hashes of
the prompts it dispatched there (llm-d's approximate prefix-cache index).

The core never reads an engine's cache. It knows what it sent where: a request's `prefix_hashes`
(RequestSpec: chained hashes of its leading prompt blocks, so block k's hash stands for the whole
prefix up to k) enter the LRU of the engine it is dispatched to, and the expected hit of a new
prompt on an engine is its longest leading run of hashes present there. The LRU holds as many
blocks as the engine's KV capacity does (the engine's cache lives in its KV pool), so it forgets
roughly when the engine does. Pure.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence


class PrefixIndex:
    def __init__(self) -> None:
        self._lru: dict[str, OrderedDict[int, None]] = {}

    def cached_tokens(self, engine: str, hashes: Sequence[int], block_tokens: int, prompt_tokens: float) -> float:
        """Prompt tokens expected from `engine`'s prefix cache: the leading blocks it holds (the
        last block may be partial), at most prompt - 1 (the engine computes at least one token)."""
        lru = self._lru.get(engine)
        if not lru or not hashes:
            return 0.0
        blocks = 0
        for h in hashes:
            if h not in lru:
                break
            blocks += 1
        return float(max(0.0, min(blocks * block_tokens, prompt_tokens - 1)))

    def add(self, engine: str, hashes: Sequence[int], capacity_blocks: int) -> None:
        """`engine` now holds these blocks (most recently used); the oldest beyond capacity go."""
        if not hashes:
            return
        lru = self._lru.setdefault(engine, OrderedDict())
        for h in hashes:
            if h in lru:
                lru.move_to_end(h)
            else:
                lru[h] = None
        while len(lru) > max(1, capacity_blocks):
            lru.popitem(last=False)

    def drop(self, engine: str) -> None:
        """The engine left the pool: its cache went with it."""
        self._lru.pop(engine, None)

    def blocks(self, engine: str) -> int:
        return len(self._lru.get(engine, ()))
