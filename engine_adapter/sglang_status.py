"""SGLang's status endpoints, served over any `Engine` (an `SGLangSurface`): ``/v1/loads``
(LoadSnapshot), ``/get_load``, ``/metrics`` (SGLang's metric names), ``/health``,
``/health_generate``, ``/server_info`` and ``/model_info`` (and their deprecated ``/get_*``
names), each as the emulated release has it.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from engine_adapter.base import EngineError, EngineLoad, GenerateRequest
from engine_adapter.sglang_lora import adapters_of, load_section
from engine_adapter.sglang_surface import SGLangSurface


class StatusEndpoints:
    """Load, metrics, health and server and model info of `surface`'s engine."""

    def __init__(self, surface: SGLangSurface) -> None:
        self.surface = surface

    def routes(self) -> list[Route]:
        return [
            Route("/v1/loads", self.v1_loads, methods=["GET"]),
            Route("/get_load", self.get_load, methods=["GET"]),
            Route("/metrics", self.metrics_endpoint, methods=["GET"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/health_generate", self.health_generate, methods=["GET"]),
            Route("/server_info", self.server_info, methods=["GET"]),
            Route("/get_server_info", self.get_server_info, methods=["GET"]),
            Route("/model_info", self.model_info, methods=["GET"]),
            Route("/get_model_info", self.get_model_info, methods=["GET"]),
        ]

    def _load_entry(self, ld: EngineLoad) -> dict[str, Any]:
        mr = self.surface.max_running()
        return {
            "dp_rank": 0,
            "num_running_reqs": ld.running,
            "num_waiting_reqs": ld.waiting,
            "num_waiting_uncached_tokens": ld.waiting_uncached_tokens,
            "num_used_tokens": ld.used_tokens,
            "num_total_tokens": ld.used_tokens + ld.waiting_uncached_tokens,
            "max_total_num_tokens": ld.total_tokens,
            "max_running_requests": mr,
            "token_usage": round(ld.kv_usage, 4),
            "gen_throughput": round(ld.gen_throughput, 2),
            "cache_hit_rate": round(ld.cache_hit_rate, 4),
            "utilization": round(min(ld.running / mr, 1.0), 4) if mr else 0.0,
        }

    async def v1_loads(self, request: Request) -> Response:
        if not self.surface.release.v1_loads:
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        dp = request.query_params.get("dp_rank")
        try:
            ld = await self.surface.engine.load()
        except EngineError as e:
            return JSONResponse({"detail": str(e)}, status_code=503)
        loads = [] if dp not in (None, "", "0") else [self._load_entry(ld)]
        include = set((request.query_params.get("include") or "").split(","))
        lora = load_section(self.surface)
        if loads and lora is not None and include & {"lora", "all"}:
            loads[0]["lora"] = lora
        if request.query_params.get("format") == "prometheus":
            lines = []
            for k, v in (loads[0].items() if loads else ()):
                if k != "dp_rank":
                    lines.append(f"# TYPE sglang_{k} gauge\nsglang_{k}{{dp_rank=\"0\"}} {v}")
            return Response("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4; charset=utf-8")
        info = await self.surface.info()
        out: dict[str, Any] = {
            "timestamp": datetime.now(UTC).isoformat(),
            "version": self.surface.version,
            "accelerator": "simulated" if info.simulated else None,
            "num_accelerators": 1,
            "loads": loads,
        }
        if self.surface.release.loads_aggregate:
            n = max(len(loads), 1)
            out["aggregate"] = {
                "total_running_reqs": sum(x["num_running_reqs"] for x in loads),
                "total_waiting_reqs": sum(x["num_waiting_reqs"] for x in loads),
                "total_reqs": sum(x["num_running_reqs"] + x["num_waiting_reqs"] for x in loads),
                "total_used_tokens": sum(x["num_used_tokens"] for x in loads),
                "total_tokens": sum(x["num_total_tokens"] for x in loads),
                "avg_token_usage": sum(x["token_usage"] for x in loads) / n,
                "avg_throughput": sum(x["gen_throughput"] for x in loads) / n,
                "avg_utilization": sum(x["utilization"] for x in loads) / n,
            }
        return JSONResponse(out)

    async def get_load(self, request: Request) -> Response:
        try:
            ld = await self.surface.engine.load()
        except EngineError as e:
            return JSONResponse({"detail": str(e)}, status_code=503)
        return JSONResponse([{
            "dp_rank": 0,
            "num_reqs": ld.running + ld.waiting,
            "num_waiting_reqs": ld.waiting,
            "num_tokens": ld.used_tokens,
            "num_pending_tokens": ld.waiting_uncached_tokens,
            "ts_tic": time.time(),
        }])

    async def metrics_endpoint(self, request: Request) -> Response:
        try:
            self.surface.metrics.set_load(await self.surface.engine.load())
            self.surface.metrics.max_total.set((await self.surface.info()).max_total_tokens)
        except EngineError:
            pass  # keep the last values, as SGLang's gauges do between updates
        return Response(generate_latest(self.surface.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def health(self, request: Request) -> Response:
        try:
            ok = await self.surface.engine.health()
        except Exception:
            ok = False
        return Response(status_code=200 if ok else 503)

    async def health_generate(self, request: Request) -> Response:
        """Like SGLang: a 1-token generation; healthy if any output arrives within 20 s."""
        req = GenerateRequest(rid=f"HEALTH_CHECK_{uuid.uuid4().hex}", prompt="The capital city of France is",
                              sampling_params={"max_new_tokens": 1, "temperature": 0}, stream=True,
                              prompt_tokens=7, output_tokens=1)

        async def first() -> bool:
            agen = self.surface.engine.submit(req)
            try:
                async for _ in agen:  # type: ignore[attr-defined]
                    return True
                return False
            finally:
                await agen.aclose()  # type: ignore[attr-defined]

        try:
            ok = await asyncio.wait_for(first(), 20.0)
        except (TimeoutError, EngineError):
            ok = False
        return Response(status_code=200 if ok else 503)

    async def _server_info_body(self, flat: bool) -> dict[str, Any]:
        info = await self.surface.info()
        try:
            thr = (await self.surface.engine.load()).gen_throughput
        except EngineError:
            thr = 0.0
        mr = self.surface.max_running()
        args: dict[str, Any] = {
            "model_path": self.surface.model_name,
            "tokenizer_path": self.surface.model_name,
            "served_model_name": self.surface.model_name,
            "tp_size": 1,
            "dp_size": 1,
            "pp_size": 1,
            "schedule_policy": "fcfs",
            "max_running_requests": mr or None,
            "max_queued_requests": None,
            "enable_metrics": True,
            "enable_priority_scheduling": False,
            "incremental_streaming_output": self.surface.incremental,
            "enable_cache_report": self.surface.enable_cache_report,
            "context_length": self.surface.context_length or info.context_length,
            **self._lora_args(),
        }
        internal = [{
            **args,
            "last_gen_throughput": thr,
            "memory_usage": {"weight": 0.0, "kvcache": 0.0, "token_capacity": info.max_total_tokens,
                             "graph": 0.0},
            "effective_max_running_requests_per_dp": mr or None,
        }]
        sched = {"status": "ready", "max_total_num_tokens": info.max_total_tokens,
                 "max_req_input_len": (self.surface.context_length or info.context_length or info.max_total_tokens) - 1}
        body: dict[str, Any] = dict(args)
        if flat:  # the pre-v0.5.6 /get_server_info merged scheduler_info into the top level
            body.update(sched)
        else:
            body["scheduler_info"] = sched
            body["startup_time"] = self.surface.startup
            body["kv_events"] = None
        body["internal_states"] = internal
        body["version"] = self.surface.version
        body["sluice_simulated"] = info.simulated
        return body

    def _lora_args(self) -> dict[str, Any]:
        """SGLang's LoRA server arguments, as the engine's adapter table has them."""
        lora = adapters_of(self.surface)
        if lora is None:
            return {"enable_lora": False, "lora_paths": None, "max_loaded_loras": None}
        return {"enable_lora": True, "lora_paths": [f"{n}={p}" if p else n for n, p in lora.paths().items()],
                "max_loaded_loras": lora.slots}

    async def server_info(self, request: Request) -> Response:
        if not self.surface.release.server_info:
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        return JSONResponse(await self._server_info_body(flat=False))

    async def get_server_info(self, request: Request) -> Response:
        return JSONResponse(await self._server_info_body(flat=not self.surface.release.server_info))

    async def _model_info_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model_path": self.surface.model_name,
            "tokenizer_path": self.surface.model_name,
            "is_generation": True,
            "preferred_sampling_params": None,
            "weight_version": "default",
            "has_image_understanding": False,
            "has_audio_understanding": False,
            "model_type": None,
            "architectures": None,
        }
        if self.surface.release.server_info:
            body["served_model_name"] = self.surface.model_name
        return body

    async def model_info(self, request: Request) -> Response:
        if not self.surface.release.server_info:
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        return JSONResponse(await self._model_info_body())

    async def get_model_info(self, request: Request) -> Response:
        return JSONResponse(await self._model_info_body())
