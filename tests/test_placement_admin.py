"""`GET /admin/v1/plan`: the placement advice of a running sluice, from its engines, their bindings
and the core's snapshot (controlplane/admin/plan.py)."""
from __future__ import annotations

import json

import pytest

from controlplane.admin.plan import EngineView, candidates, devices_seen, engine_views, plan_document
from controlplane.config import EngineConfig
from engine_adapter.sim.engine import SimEngine
from engine_adapter.sim.profile import load_profile
from telemetry.nvml import GpuSampler
from tests.fake_nvml import FakeNvml, h100_layout
from tests.gateway_fixtures import ADMIN, running_gateway
from tests.test_gateway import raw

AUTH = {"Authorization": f"Bearer {ADMIN}"}
LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
MIG_3G, MIG_2G = "MIG-3b2c9f60-0001-5e0e-9a1c-6b1f00000001", "MIG-3b2c9f60-0002-5e0e-9a1c-6b1f00000002"
READINGS = GpuSampler(FakeNvml(count=2, mig=h100_layout())).sample()  # GPU 0 carved, GPU 1 whole


def test_the_live_devices_are_each_instance_and_each_uncarved_gpu():
    seen = devices_seen(READINGS)
    assert [t.name for t in seen] == [f"GPU 0 MIG 3g.40gb ({MIG_3G})", f"GPU 0 MIG 2g.20gb ({MIG_2G})",
                                      "GPU 0 MIG 1g.10gb (MIG-3b2c9f60-0003-5e0e-9a1c-6b1f00000003)",
                                      "GPU 0 MIG 1g.10gb (MIG-3b2c9f60-0004-5e0e-9a1c-6b1f00000004)",
                                      "GPU 1 (NVIDIA H100 80GB HBM3)"]
    assert seen[0].memory_bytes == 40448 << 20 and seen[0].board == "H100-80GB" and seen[0].profile == "3g.40gb"
    # the boards of the devices seen choose the catalogue's profiles; an unknown board is refused
    assert [t.name for t in candidates(None, seen)][:2] == ["H100-80GB", "H100-80GB 1g.10gb"]
    assert candidates("A100-40GB", [])[0].name == "A100-40GB"
    with pytest.raises(ValueError, match="unknown GPU 'V100'"):
        candidates("V100", seen)


def test_engines_bound_to_mig_instances_are_judged_on_their_instance():
    views = [
        # 20 sequences of 2,048 on the 3g.40gb: 40,960 of 119,185 estimated tokens (34 %): ok
        EngineView("e-3g", LLAMA, None, 20, 40_960.0, EngineConfig("e-3g", kind="sglang", url="http://x", mig=MIG_3G)),
        # Qwen2.5-7B, the same load on the 2g.20gb: 86 % of its 47,472 tokens, past 80 %
        EngineView("e-2g", "Qwen/Qwen2.5-7B-Instruct", None, 20, 40_960.0,
                   EngineConfig("e-2g", kind="sglang", url="http://y", mig=MIG_2G)),
    ]
    doc = json.loads(json.dumps(plan_document(views, READINGS, [])))
    llama, qwen = doc["models"]
    assert doc["advice_only"] is True and llama["engines"] == ["e-3g"] and qwen["engines"] == ["e-2g"]
    assert llama["pool"]["verdict"] == "ok" and llama["pool"]["capacity_tokens"] == 119_185
    assert llama["demand"] == {"sequences": 20, "mean_context": 2048.0, "tokens": 40_960.0,
                               "source": "engines' reports: running and KV in use now"}
    live = next(f for f in llama["fits"] if f["target"].startswith("GPU 0 MIG 3g.40gb"))
    assert (live["kv_tokens"], live["sequences"]) == (119_185, 58)
    # Qwen2.5-7B: 15.23 GB of weights and 57,344 B per token; 2g.20gb: 0.852 x 20,096 MiB - weights
    q = next(f for f in qwen["fits"] if f["target"] == "H100-80GB 2g.20gb")
    assert q["kv_tokens"] == (20_096 * 2**20 * 852 // 1000 - 7_615_616_512 * 2) // 57_344 == 47_472
    assert qwen["pool"]["verdict"] == "under-provisioned" and qwen["pool"]["needed"] == 2


def test_reported_capacity_unknown_models_and_idle_pools():
    views = [EngineView("a", LLAMA, 451_643, 0, 0.0), EngineView("b", LLAMA, 451_643, 0, 0.0),
             EngineView("c", "acme/secret-model-13b", 90_000, 3, 900.0), EngineView("d", None, None, 0, None)]
    recent = [{"engine": "a", "status": "ok", "prompt_tokens": 1000, "completion_tokens": 200},
              {"engine": "b", "status": "ok", "prompt_tokens": 3000, "completion_tokens": 600},
              {"engine": "a", "status": "rejected", "prompt_tokens": 99999, "completion_tokens": 0}]
    llama, secret, down = plan_document(views, [], recent)["models"]
    # nothing running: the mean context of the recent finished requests, no demand yet
    assert llama["demand"]["sequences"] == 0 and llama["demand"]["mean_context"] == 2400
    assert llama["pool"]["capacity_tokens"] == 2 * 451_643 and llama["pool"]["verdict"] == "over-provisioned"
    assert secret["error"].startswith("'acme/secret-model-13b' is not a model sluice knows")
    assert "sluice plan --model <its config.json>" in secret["error"] and secret["engines"] == ["c"]
    assert down == {"model": "?", "engines": ["d"], "error": "the engine did not say what it serves"}


class Down:
    async def info(self):
        raise ConnectionError("engine down")


async def test_engine_views_ask_each_engine_and_survive_one_down():
    sim = SimEngine("sim-0", load_profile())
    rows = [{"name": "sim-0", "running": 12, "kv_usage": 0.25}, {"name": "gone", "running": 0, "kv_usage": None}]
    configs = [EngineConfig("sim-0"), EngineConfig("gone", kind="sglang", url="http://x")]
    up, down = await engine_views(configs, {"sim-0": sim, "gone": Down()}, rows)
    cap = load_profile().kv_capacity_tokens
    assert (up.model, up.kv_capacity, up.sequences, up.kv_tokens) == (LLAMA, cap, 12, 0.25 * cap)
    assert up.config is configs[0] and up.engine is sim
    assert (down.model, down.kv_capacity, down.kv_tokens) == (None, None, None)


def test_over_http_with_simulated_engines(tmp_path):
    profile = load_profile()
    engines = {n: SimEngine(n, profile) for n in ("sim-0", "sim-1")}
    with running_gateway(tmp_path, engines) as (server, _):
        status, _, data = raw(server, "GET", "/admin/v1/plan?boards=H100-80GB,H200-141GB", headers=AUTH)
        assert status == 200
        doc = json.loads(data)
        (model,) = doc["models"]
        assert model["model"] == LLAMA and model["engines"] == ["sim-0", "sim-1"]
        assert model["pool"]["replicas"] == 2 and model["pool"]["capacity_tokens"] == 2 * profile.kv_capacity_tokens
        boards = {f["board"] for f in model["fits"]}
        assert boards == {"H100-80GB", "H200-141GB"}
        h200 = next(f for f in model["fits"] if f["target"] == "H200-141GB")
        assert h200["reserve_bytes"] > 12 * 2**30 and h200["fits"]
        status, _, data = raw(server, "GET", "/admin/v1/plan?boards=B300", headers=AUTH)
        err = json.loads(data)["error"]
        assert status == 400 and err["param"] == "boards" and "unknown GPU 'B300'" in err["message"]
        assert raw(server, "GET", "/admin/v1/plan")[0] == 401
