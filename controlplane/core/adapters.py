"""Which LoRA adapters each engine holds, as dispatch expects them (docs/dispatch.md "adapter").

An engine reports the adapters it holds, how many it keeps at once and what a load costs (its load
report's `adapters`, engine_adapter/lora.py); between reports the index adds what the core sent
there: an engine sent a request for an adapter loads it (the simulator itself, a SGLang server
through sluice's load call), least recently used out once the engine's slots are full, as the
engine itself evicts. Dispatch asks what the request's adapter costs on each engine: nothing where
it is held, the engine's load time where it is not.

Pure: the core feeds it reports and dispatches, nothing else.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["AdapterIndex"]


# A report may have been taken before a load the core asked for (the poll and the dispatch race):
# an adapter sent to an engine stays held while up to this many reports leave it out.
STALE_REPORTS = 2


@dataclass(slots=True)
class _Engine:
    held: OrderedDict[str, None] = field(default_factory=OrderedDict)  # least recently used first
    slots: int | None = None
    load_s: float = 0.0
    unconfirmed: dict[str, int] = field(default_factory=dict)  # sent here: reports since that left it out


class AdapterIndex:
    def __init__(self) -> None:
        self._engines: dict[str, _Engine] = {}

    def report(self, engine: str, loaded: Iterable[str], slots: int | None, load_s: float) -> None:
        """What the engine says it holds: it replaces the index's guess, which keeps its own order
        for the adapters still there (the engine's order for the rest), and what the core sent
        there since: a report may predate that load (STALE_REPORTS)."""
        e = self._engines.setdefault(engine, _Engine())
        names = list(loaded)
        for n in list(e.unconfirmed):
            if n in names:
                del e.unconfirmed[n]
            else:
                e.unconfirmed[n] += 1
                if e.unconfirmed[n] > STALE_REPORTS:
                    del e.unconfirmed[n]
        reported = set(names)
        kept = [n for n in e.held if n in reported or n in e.unconfirmed]
        e.held = OrderedDict.fromkeys([*(n for n in names if n not in e.held), *kept])
        e.slots, e.load_s = slots, load_s
        self._trim(e)

    def costs(self, adapter: str, engines: Iterable[str]) -> list[tuple[float, bool, bool]]:
        """Per engine: (what loading `adapter` costs there, whether it holds it already, whether
        loading it there would push another adapter out: its slots are full)."""
        out = []
        for name in engines:
            e = self._engines.get(name)
            if e is None:
                out.append((0.0, False, False))
            else:
                held = adapter in e.held
                out.append((e.load_s, held, not held and e.slots is not None and len(e.held) >= e.slots))
        return out

    def used(self, engine: str, adapter: str) -> None:
        """A request for `adapter` was sent to `engine`: it holds it now, most recently used."""
        e = self._engines.setdefault(engine, _Engine())
        e.held[adapter] = None
        e.held.move_to_end(adapter)
        e.unconfirmed[adapter] = 0
        self._trim(e)

    @staticmethod
    def _trim(e: _Engine) -> None:
        while e.slots is not None and len(e.held) > e.slots:
            gone, _ = e.held.popitem(last=False)
            e.unconfirmed.pop(gone, None)

    def drop(self, engine: str) -> None:
        self._engines.pop(engine, None)
