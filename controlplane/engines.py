"""Engines from the config: the embedded simulator, SGLang over HTTP, SGLang in-process."""
from __future__ import annotations

import os
from collections.abc import Mapping

from controlplane.config import Config, EngineConfig
from engine_adapter.base import Engine


def build_engine(cfg: EngineConfig, adapters: Mapping[str, str | None] | None = None) -> Engine:
    """`adapters`: the LoRA adapters its model pool declares (name -> path); a simulated engine holds
    those without a path from the start, as SGLang does its --lora-paths, and loads the others when
    a request brings their path."""
    if cfg.kind == "sim":
        from engine_adapter.sim.engine import SimEngine
        from engine_adapter.sim.profile import load_profile

        lora = None
        if adapters or cfg.max_loaded_loras is not None:
            lora = {name: None for name, path in (adapters or {}).items() if path is None}
        return SimEngine(cfg.name, load_profile(cfg.profile), seed=cfg.seed, speedup=cfg.speedup, lora_paths=lora,
                         max_loaded_loras=cfg.max_loaded_loras)
    if cfg.kind == "sglang":
        from engine_adapter.sglang_http import SGLangHTTPEngine

        key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
        return SGLangHTTPEngine(cfg.name, cfg.url or "", api_key=key, model=cfg.model)
    from engine_adapter.sglang_inprocess import SGLangInProcessEngine

    return SGLangInProcessEngine(cfg.name, model_path=cfg.model)


def build_engines(config: Config) -> dict[str, Engine]:
    pools = config.catalog().pools
    return {cfg.name: build_engine(cfg, pools[cfg.model].adapters) for cfg in config.engines}
