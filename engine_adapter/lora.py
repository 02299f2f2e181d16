"""LoRA adapters on an engine, as SGLang keeps them (`--enable-lora`, docs/engines.md "LoRA").

SGLang serves a request with an adapter by name (`lora_path` in `/generate` and the OpenAI bodies,
or `model: "base:adapter"`); the name must be loaded (`--lora-paths name=path` at start, or `POST
/load_lora_adapter {"lora_name", "lora_path"}`), else the request is refused with "The following
requested LoRA adapters are not loaded". `--max-loaded-loras` bounds how many are loaded at once.

`AdapterSet` is that table: names in least-recently-used order, each with its path, whether it is
pinned and how many running requests use it. Room for a new one is made by evicting the least
recently used adapter that is neither pinned nor in use (what sluice does over SGLang's unload
endpoint, and what the simulator does itself). `AdapterState` is what an engine reports of it
(`EngineLoad.adapters`), and what dispatch reads: which are loaded, how many fit, and what a load
costs.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["AdapterError", "AdapterSet", "AdapterState", "not_loaded_message"]


class AdapterError(ValueError):
    """An adapter that is not loaded, or no room to load one."""


def not_loaded_message(name: str, loaded: list[str]) -> str:
    """SGLang's words (LoRARegistry.acquire) for a request whose adapter is not loaded."""
    return (f"The following requested LoRA adapters are not loaded: {name}\n"
            f"Loaded adapters: {loaded}.")


@dataclass(frozen=True, slots=True)
class AdapterState:
    """An engine's adapters as it reports them."""

    loaded: tuple[str, ...]  # least recently used first
    slots: int | None  # how many it holds at once (--max-loaded-loras); None: no limit
    load_s: float  # what loading one takes (the simulator's own; an estimate for a real engine)


@dataclass(slots=True)
class _Entry:
    path: str | None
    pinned: bool = False
    in_use: int = 0


class AdapterSet:
    def __init__(self, slots: int | None = None, load_s: float = 0.0) -> None:
        if slots is not None and slots < 1:
            raise ValueError("slots must be >= 1 (or None: no limit)")
        self.slots = slots
        self.load_s = load_s
        self._held: OrderedDict[str, _Entry] = OrderedDict()

    def __contains__(self, name: object) -> bool:
        return name in self._held

    def names(self) -> list[str]:
        return list(self._held)

    def paths(self) -> dict[str, str | None]:
        return {name: e.path for name, e in self._held.items()}

    def state(self) -> AdapterState:
        return AdapterState(tuple(self._held), self.slots, self.load_s)

    def victim(self) -> str | None:
        """What would make room for one more: None when there is room; AdapterError when every
        loaded adapter is pinned or in use."""
        if self.slots is None or len(self._held) < self.slots:
            return None
        for name, e in self._held.items():
            if not e.pinned and not e.in_use:
                return name
        raise AdapterError(f"no room to load a LoRA adapter: all {self.slots} loaded are pinned or in use")

    def load(self, name: str, path: str | None, pinned: bool = False) -> str | None:
        """Load `name` (already loaded: only marked used); returns the adapter evicted for it, if any."""
        if name in self._held:
            self._held.move_to_end(name)
            return None
        evicted = self.victim()
        if evicted is not None:
            del self._held[evicted]
        self._held[name] = _Entry(path, pinned)
        return evicted

    def unload(self, name: str) -> None:
        entry = self._held.get(name)
        if entry is None:
            raise AdapterError(f"LoRA adapter {name!r} is not loaded; loaded: {self.names()}")
        if entry.in_use:
            raise AdapterError(f"LoRA adapter {name!r} is in use by {entry.in_use} running request(s)")
        del self._held[name]

    def acquire(self, name: str) -> None:
        """A request starts with `name` (most recently used now); AdapterError in SGLang's words
        when it is not loaded."""
        entry = self._held.get(name)
        if entry is None:
            raise AdapterError(not_loaded_message(name, self.names()))
        entry.in_use += 1
        self._held.move_to_end(name)

    def release(self, name: str) -> None:
        entry = self._held.get(name)
        if entry is not None and entry.in_use:
            entry.in_use -= 1
