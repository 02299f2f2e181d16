"""Engines from the config: the embedded simulator, SGLang over HTTP, SGLang in-process."""
from __future__ import annotations

import os

from controlplane.config import Config, EngineConfig
from engine_adapter.base import Engine


def build_engine(cfg: EngineConfig) -> Engine:
    if cfg.kind == "sim":
        from engine_adapter.sim.engine import SimEngine
        from engine_adapter.sim.profile import load_profile

        return SimEngine(cfg.name, load_profile(cfg.profile), seed=cfg.seed, speedup=cfg.speedup)
    if cfg.kind == "sglang":
        from engine_adapter.sglang_http import SGLangHTTPEngine

        key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
        return SGLangHTTPEngine(cfg.name, cfg.url or "", api_key=key, model=cfg.model)
    from engine_adapter.sglang_inprocess import SGLangInProcessEngine

    return SGLangInProcessEngine(cfg.name, model_path=cfg.model)


def build_engines(config: Config) -> dict[str, Engine]:
    return {cfg.name: build_engine(cfg) for cfg in config.engines}
