"""What `SGLangHTTPEngine` (engine_adapter/sglang_http.py) asks SGLang besides generation: its load,
its static facts and its health, each through the control-timeout GET plumbing they share.

* `load` -> ``GET /v1/loads``, falling back to ``GET /metrics`` and then the deprecated ``/get_load``;
* `info` -> ``/server_info`` (falling back to ``/get_server_info``) and ``/model_info``
  (``/get_model_info``);
* `health` -> ``GET /health``.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import aiohttp
from yarl import URL

from engine_adapter.base import EngineError, EngineInfo, EngineLoad, StepProfile
from engine_adapter.sglang_adapters import RemoteAdapters
from engine_adapter.sglang_wire import (
    describe,
    error_message,
    loads,
)
from engine_adapter.sglang_load import max_total_tokens, parse_prometheus_load, parse_v1_loads

__all__ = ["SGLangStatusQueries"]

_NOT_THERE = (404, 405)  # an endpoint this SGLang version does not have


class _Unavailable(Exception):
    """An optional endpoint is absent on this engine (404/405): try the next source."""


class SGLangStatusQueries:
    """`SGLangHTTPEngine`'s load, info and health (a mixin: the engine holds the state)."""

    if TYPE_CHECKING:  # SGLangHTTPEngine's, which this mixin reads and updates
        name: str
        kind: str
        url: str
        model: str | None
        profile: StepProfile | None
        adapters: RemoteAdapters | None
        _ctl_timeout: aiohttp.ClientTimeout
        _load_source: str | None
        _max_total_tokens: int

        def _u(self, path: str) -> URL: ...
        def _sess(self) -> aiohttp.ClientSession: ...

    async def _get(self, path: str, params: dict[str, str] | None = None) -> tuple[int, bytes]:
        try:
            async with self._sess().get(self._u(path), params=params, timeout=self._ctl_timeout) as r:
                return r.status, await r.read()
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            raise EngineError(f"{self.name}: GET {path} failed: {describe(e)}") from e

    async def _get_json(self, path: str, params: dict[str, str] | None = None) -> Any:
        status, body = await self._get(path, params)
        if status in _NOT_THERE:
            raise _Unavailable(path)
        if status != 200:
            raise EngineError(
                f"{self.name}: GET {path} returned {status}: {error_message(body)}",
                status_code=status if status >= 400 else 502,
            )
        try:
            return loads(body)
        except ValueError as e:
            raise EngineError(f"{self.name}: GET {path} returned invalid JSON") from e

    # ------------------------------------------------------------------ load

    async def load(self) -> EngineLoad:
        """Current load: ``/v1/loads``, else ``/metrics``, else ``/get_load``. Raises EngineError."""
        order = ("loads", "metrics", "get_load")
        if self._load_source is not None:
            order = (self._load_source,) + tuple(s for s in order if s != self._load_source)
        for src in order:
            try:
                if src == "loads":
                    el = parse_v1_loads(await self._get_json("/v1/loads", {"include": "core"}))
                elif src == "metrics":
                    el = await self._load_from_metrics()
                else:
                    el = await self._load_from_get_load()
            except _Unavailable:
                continue
            self._load_source = src
            if el.total_tokens:
                self._max_total_tokens = el.total_tokens
            if self.adapters is not None:
                try:
                    el.adapters = await self.adapters.refresh()
                except (_Unavailable, EngineError):
                    pass  # the load report stands without them
            return el
        raise EngineError(f"{self.name}: no load source (/v1/loads, /metrics, /get_load)", retryable=False)

    async def _load_from_metrics(self) -> EngineLoad:
        status, body = await self._get("/metrics")
        if status in _NOT_THERE:
            raise _Unavailable("/metrics")
        if status != 200:
            raise EngineError(f"{self.name}: GET /metrics returned {status}")
        el = parse_prometheus_load(body.decode("utf-8", "replace"))
        if el is None:  # /metrics exists but carries no sglang gauges (e.g. a proxy's)
            raise _Unavailable("/metrics")
        if not el.total_tokens and self._max_total_tokens:
            el.total_tokens = self._max_total_tokens
        return el

    async def _load_from_get_load(self) -> EngineLoad:
        data = await self._get_json("/get_load")
        rows = data if isinstance(data, list) else [data]
        running = waiting = used = 0
        for row in rows:
            if not isinstance(row, dict):
                continue
            w = int(row.get("num_waiting_reqs", 0) or 0)
            # [INFERRED] num_reqs counts running and waiting requests together.
            running += max(int(row.get("num_reqs", 0) or 0) - w, 0)
            waiting += w
            used += int(row.get("num_tokens", 0) or 0)
        if not self._max_total_tokens:
            try:
                self._max_total_tokens = (await self.info()).max_total_tokens
            except EngineError:
                pass
        return EngineLoad(running, waiting, used, self._max_total_tokens, timestamp=time.time())

    # ------------------------------------------------------------------ info / health

    async def info(self) -> EngineInfo:
        """Static facts: KV capacity, version, model. Raises EngineError when unreachable."""
        try:
            si = await self._get_json("/server_info")
        except _Unavailable:
            si = await self._get_json("/get_server_info")
        if not isinstance(si, dict):
            raise EngineError(f"{self.name}: server_info is not an object")
        max_tokens = max_total_tokens(si)
        if max_tokens:
            self._max_total_tokens = max_tokens
        model = self.model
        if model is None:
            try:
                mi = await self._get_json("/model_info")
            except _Unavailable:
                try:
                    mi = await self._get_json("/get_model_info")
                except _Unavailable:
                    mi = {}
            if isinstance(mi, dict):
                model = mi.get("served_model_name") or mi.get("model_path")
            model = model or si.get("served_model_name") or si.get("model_path") or "unknown"
            self.model = model
        version = si.get("version")
        context = await self._context_length(model, si)
        if si.get("enable_lora") and self.adapters is None:  # SGLang's --enable-lora (or --lora-paths)
            slots = si.get("max_loaded_loras")
            self.adapters = RemoteAdapters(self, slots if isinstance(slots, int) and slots > 0 else None)
        return EngineInfo(
            name=self.name,
            kind=self.kind,
            model=model,
            url=self.url,
            max_total_tokens=max_tokens or self._max_total_tokens,
            simulated=False,
            profile=self.profile,
            version=str(version) if version is not None else None,
            context_length=context,
        )

    async def _context_length(self, model: str, si: dict[str, Any]) -> int | None:
        """The model's context window: `/v1/models`' `max_model_len` (SGLang's
        `model_config.context_len`, what its tokenizer manager checks requests against), else the
        `context_length` server argument (None unless the operator set it)."""
        try:
            models = await self._get_json("/v1/models")
        except (_Unavailable, EngineError):  # optional: the window then comes from the server args
            models = None
        cards = models.get("data") if isinstance(models, dict) else None
        if isinstance(cards, list):
            card = next((c for c in cards if isinstance(c, dict) and c.get("id") == model), None)
            card = card or (cards[0] if cards and isinstance(cards[0], dict) else {})
            if isinstance(card.get("max_model_len"), int):
                return card["max_model_len"]
        value = si.get("context_length")
        return value if isinstance(value, int) and value > 0 else None

    async def health(self) -> bool:
        """True when ``GET /health`` answers 2xx; never raises."""
        try:
            async with self._sess().get(self._u("/health"), timeout=self._ctl_timeout) as r:
                await r.read()
                return 200 <= r.status < 300
        except Exception:
            return False
