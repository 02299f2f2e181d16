"""The placement estimate (controlplane/core/placement.py) against hand-computed cases."""
from __future__ import annotations

import json

import pytest

from controlplane.core.placement import (
    HIGH_WATER, Demand, Replica, advise_pool, fit, plan_model, reserve_mib, static_fraction_milli,
)
from controlplane.core.placement_catalog import (
    KNOWN_MODELS, MIB, ModelConfigError, Target, board_of, board_targets, count_params, known_model,
    model_from_config,
)
from engine_adapter.sim.profile import load_profile

LLAMA_8B = KNOWN_MODELS["meta-llama/Llama-3.1-8B-Instruct"]


def target(board: str, profile: str | None = None) -> Target:
    return next(t for t in board_targets(board) if t.profile == profile)


def test_llama_3_1_8b_size_by_hand():
    # embeddings and LM head (untied): 2 x 128,256 x 4,096 = 1,050,673,152
    # per layer: q 4,096 x 4,096 + k, v 2 x 4,096 x 1,024 + o 4,096 x 4,096 = 41,943,040
    #            gated MLP 3 x 4,096 x 14,336 = 176,160,768; two RMSNorms 8,192 -> 218,112,000
    # 32 layers 6,979,584,000 + the final norm 4,096
    assert count_params(LLAMA_8B) == 1_050_673_152 + 32 * 218_112_000 + 4_096 == 8_030_261_248
    m = known_model("meta-llama/Llama-3.1-8B-Instruct")
    assert m is not None and m.weights_bytes == 16_060_522_496  # 16.06 GB in BF16
    assert m.kv_bytes_per_token == 32 * 8 * 128 * 2 * 2 == 131_072  # layers x kv heads x head_dim x (K, V) x 2 B
    assert m.context_length == 131_072


@pytest.mark.parametrize(("name", "params", "kv_per_token"), [
    ("meta-llama/Llama-3.1-70B-Instruct", 70_553_706_496, 80 * 8 * 128 * 2 * 2),
    ("meta-llama/Llama-3.2-1B-Instruct", 1_235_814_400, 16 * 8 * 64 * 2 * 2),  # tied embeddings
    ("meta-llama/Llama-3.2-3B-Instruct", 3_212_749_824, 28 * 8 * 128 * 2 * 2),
    ("Qwen/Qwen2.5-7B-Instruct", 7_615_616_512, 28 * 4 * 128 * 2 * 2),  # q/k/v biases
    ("mistralai/Mistral-7B-Instruct-v0.3", 7_248_023_552, 32 * 8 * 128 * 2 * 2),
])
def test_known_models_match_their_published_parameter_counts(name, params, kv_per_token):
    m = known_model(name)
    assert m is not None and (m.params, m.kv_bytes_per_token) == (params, kv_per_token)
    assert known_model(name.split("/")[1].upper()) == m  # by the part after the '/', any case


def test_mixtral_counts_its_experts_and_router():
    cfg = {**LLAMA_8B, "model_type": "mixtral", "vocab_size": 32000, "num_local_experts": 8}
    # per layer: attention 41,943,040 + 8 experts x 176,160,768 + router 4,096 x 8 + norms 8,192
    assert count_params(cfg) == 2 * 32000 * 4096 + 32 * (41_943_040 + 8 * 176_160_768 + 32_768 + 8_192) + 4096
    assert count_params(cfg) == 46_702_792_704  # Mixtral-8x7B's published 46.7 B


def test_config_json_fields_and_their_defaults():
    mha = {"model_type": "llama", "hidden_size": 2048, "num_hidden_layers": 4, "num_attention_heads": 16,
           "intermediate_size": 5632, "vocab_size": 1000, "torch_dtype": "float32"}
    m = model_from_config("tiny", mha)
    # no num_key_value_heads: multi-head (16); no head_dim: 2048 / 16; float32: 4 bytes
    assert (m.kv_heads, m.head_dim, m.weight_bytes, m.kv_bytes) == (16, 128, 4, 4)
    assert m.kv_bytes_per_token == 2 * 4 * 16 * 128 * 4 and m.context_length == 4096
    newer = {k: v for k, v in mha.items() if k != "torch_dtype"}  # transformers 5 writes "dtype"
    qwen3 = {**newer, "model_type": "qwen3", "head_dim": 64, "num_key_value_heads": 4, "dtype": "bfloat16"}
    q = model_from_config("q3", qwen3)
    assert (q.head_dim, q.kv_heads, q.weight_bytes) == (64, 4, 2)
    fp8_cache = model_from_config("llama", LLAMA_8B, kv_dtype="fp8")
    assert fp8_cache.kv_bytes_per_token == 65_536 and fp8_cache.weights_bytes == 16_060_522_496
    int4 = model_from_config("llama", LLAMA_8B, dtype="int4")
    assert int4.weights_bytes == 4_015_130_624 and int4.kv_bytes_per_token == 131_072  # the cache stays BF16


@pytest.mark.parametrize(("cfg", "kw", "message"), [
    ({**LLAMA_8B, "num_hidden_layers": "32"}, {}, "'num_hidden_layers' must be a positive integer"),
    ({**LLAMA_8B, "model_type": "gpt_neox"}, {}, "cannot count the parameters of a 'gpt_neox'"),
    ({**LLAMA_8B, "kv_lora_rank": 512}, {}, "MLA"),
    ({**LLAMA_8B, "quantization_config": {"quant_method": "awq"}}, {}, "give the weights' dtype"),
    (LLAMA_8B, {"dtype": "fp6"}, "unknown dtype 'fp6'"),
])
def test_an_unusable_config_is_refused_with_what_to_give(cfg, kw, message):
    with pytest.raises(ModelConfigError, match=message):
        model_from_config("m", cfg, **kw)


def test_a_given_parameter_count_covers_any_architecture():
    m = model_from_config("neox", {**LLAMA_8B, "model_type": "gpt_neox"}, params=6_900_000_000)
    assert m.weights_bytes == 13_800_000_000
    fp8 = model_from_config("llama-fp8", {**LLAMA_8B, "quantization_config": {"quant_method": "fp8"}})
    assert fp8.weights_bytes == 8_030_261_248 and fp8.kv_bytes_per_token == 131_072


def test_the_reserve_is_sglangs():
    # ServerArgs at TP 1: 2.8 + 1/10 GiB under 35 GiB, 9.5 + 1/2 under 90, 12 + 1/2 under 160, 32 above
    assert reserve_mib(20 * 1024) == pytest.approx(2.9 * 1024)
    assert reserve_mib(40 * 1024) == reserve_mib(81559) == 10 * 1024
    assert reserve_mib(143771) == 12.5 * 1024 and reserve_mib(180 * 1024) == 32 * 1024
    assert reserve_mib(81559, parallel=2) == 10.5 * 1024
    # (81,559 - 10,240) / 81,559 = 0.87445 -> 0.874, rounded as SGLang rounds mem_fraction_static
    assert static_fraction_milli(81559 * MIB) == 874


def test_llama_8b_on_a_whole_h100_by_hand():
    m = known_model("meta-llama/Llama-3.1-8B-Instruct")
    f = fit(m, target("H100-80GB"), mean_context=2048)
    memory = 81_559 * MIB  # 85,520,809,984 B, nvidia-smi's H100 80GB HBM3
    static = memory * 874 // 1000  # 74,745,187,926
    assert f.kv_pool_bytes == static - 16_060_522_496 == 58_684_665_430
    assert f.kv_tokens == 58_684_665_430 // 131_072 == 447_728
    assert f.sequences == 447_728 // 2048 == 218 and f.holds_context and f.fits
    assert f.reserve_bytes == memory - static
    # the simulator's profile sized its pool with SGLang's older fixed 0.88: within 1 % of this
    assert f.kv_tokens == pytest.approx(load_profile("h100-llama3.1-8b").kv_capacity_tokens, rel=0.01)


def test_llama_8b_on_h100_mig_profiles_by_hand():
    m = known_model("meta-llama/Llama-3.1-8B-Instruct")
    three_g = fit(m, target("H100-80GB", "3g.40gb"), mean_context=2048)
    # 40,448 MiB; reserve 10 GiB (35..90 GiB) -> 30,208 / 40,448 = 0.7468 -> 0.747
    assert three_g.kv_pool_bytes == 40_448 * MIB * 747 // 1000 - 16_060_522_496 == 15_621_840_633
    assert (three_g.kv_tokens, three_g.sequences, three_g.holds_context) == (119_185, 58, False)
    two_g = fit(m, target("H100-80GB", "2g.20gb"), mean_context=2048)
    # 20,096 MiB; reserve 2.9 GiB -> (20,096 - 2,969.6) / 20,096 = 0.8522 -> 0.852
    assert two_g.kv_pool_bytes == 20_096 * MIB * 852 // 1000 - 16_060_522_496
    assert (two_g.kv_tokens, two_g.sequences) == (14_442, 7)
    one_g = fit(m, target("H100-80GB", "1g.10gb"), mean_context=2048)
    assert not one_g.fits and one_g.kv_tokens == 0 and one_g.kv_pool_bytes < 0  # 14.96 GiB of weights in 9.75


def test_the_catalogue():
    assert [t.profile for t in board_targets("H100-80GB")] == [None, "1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb",
                                                               "4g.40gb", "7g.80gb"]
    assert target("H100-80GB", "3g.40gb").per_board == 2 and target("H100-80GB", "3g.40gb").measured
    h200 = target("H200-141GB", "3g.71gb")  # not measured: 71 GB x 0.975
    assert not h200.measured and h200.memory_bytes == round(71 * 1024 * 0.975) * MIB
    assert board_targets("A100-40GB", mig=False) == [Target("A100-40GB", 40960 * MIB, "A100-40GB")]
    with pytest.raises(ModelConfigError, match="unknown GPU 'B300'"):
        board_targets("B300")
    assert [board_of(n) for n in ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB", "NVIDIA A100-SXM4-80GB",
                                   "NVIDIA H200", "NVIDIA H100 NVL", "NVIDIA L4", None)] == \
        ["H100-80GB", "A100-40GB", "A100-80GB", "H200-141GB", None, None, None]


M8B = known_model("meta-llama/Llama-3.1-8B-Instruct")
H100 = target("H100-80GB")
CANDIDATES = board_targets("H100-80GB")


def test_a_pool_short_of_kv_is_under_provisioned():
    demand = Demand(sequences=400, mean_context=2048, source="test")  # 819,200 KV tokens
    advice = advise_pool(M8B, demand, [Replica("e0", H100), Replica("e1", H100)], CANDIDATES)
    # two whole H100s hold 895,456: 91 % > 80 %; 819,200 / (0.8 x 447,728) = 2.29 -> 3 replicas
    assert (advice.verdict, advice.capacity_tokens, advice.needed) == ("under-provisioned", 895_456, 3)
    assert advice.utilisation == pytest.approx(819_200 / 895_456)
    assert "fill 91% of 895,456 over 2 replica(s)" in advice.reason


def test_a_pool_with_a_replica_to_spare_is_over_provisioned():
    demand = Demand(sequences=100, mean_context=2048, source="test")  # 204,800: one H100 holds it in 46 %
    advice = advise_pool(M8B, demand, [Replica("e0", H100), Replica("e1", H100)], CANDIDATES)
    assert (advice.verdict, advice.needed) == ("over-provisioned", 1)
    # each replica's share (102,400) fits a 7g.80gb, not a 3g.40gb (0.8 x 119,185 = 95,348)
    assert advice.smallest_fit == "H100-80GB 7g.80gb"


def test_one_replica_on_a_device_twice_its_need_is_over_provisioned():
    demand = Demand(sequences=20, mean_context=2048, source="test")  # 40,960 tokens
    advice = advise_pool(M8B, demand, [Replica("e0", H100)], CANDIDATES)
    assert advice.verdict == "over-provisioned" and advice.needed == 1
    assert advice.smallest_fit == "H100-80GB 3g.40gb" and "each replica's share fits a H100-80GB 3g.40gb" in advice.reason
    on_3g = advise_pool(M8B, demand, [Replica("e0", target("H100-80GB", "3g.40gb"))], CANDIDATES)
    assert on_3g.verdict == "ok" and on_3g.utilisation == pytest.approx(40_960 / 119_185)


def test_the_engines_own_capacity_wins_over_the_estimate():
    demand = Demand(sequences=50, mean_context=2048, source="test")  # 102,400
    reported = advise_pool(M8B, demand, [Replica("e0", H100, kv_tokens=120_000)], CANDIDATES)
    assert reported.capacity_tokens == 120_000 and reported.verdict == "under-provisioned"  # 85 % > 80 %
    assert reported.needed == 2


def test_a_model_too_big_for_its_device_and_a_pool_without_data():
    one_g = target("H100-80GB", "1g.10gb")
    assert advise_pool(M8B, Demand(1, 100, "t"), [Replica("e0", one_g)]).verdict == "does not fit"
    unknown = advise_pool(M8B, Demand(1, 100, "t"), [Replica("e0")])
    assert unknown.verdict == "unknown" and "no device known for e0" in unknown.reason
    idle = advise_pool(M8B, None, [Replica("e0", H100)])
    assert (idle.verdict, idle.capacity_tokens, idle.reason) == ("unknown", 447_728, "no load observed")
    assert advise_pool(M8B, Demand(1, 100, "t"), []).reason == "no engine serves it"


def test_high_water_is_the_line_between_ok_and_under():
    assert fit(M8B, H100).kv_tokens * HIGH_WATER == pytest.approx(358_182.4)
    within = advise_pool(M8B, Demand(sequences=358_182, mean_context=1, source="t"), [Replica("e0", H100)])
    past = advise_pool(M8B, Demand(sequences=358_183, mean_context=1, source="t"), [Replica("e0", H100)])
    assert (within.verdict, within.needed) == ("ok", 1)
    assert (past.verdict, past.needed) == ("under-provisioned", 2)


def test_the_plan_document_is_json():
    p = plan_model(M8B, Demand(30, 2048, "command line"), CANDIDATES, [Replica("e0", H100)])
    doc = json.loads(json.dumps(p.to_dict()))
    assert doc["model"] == "meta-llama/Llama-3.1-8B-Instruct" and doc["weights_bytes"] == 16_060_522_496
    assert [f["fits"] for f in doc["fits"]] == [True, False, True, True, True, True, True]
    assert doc["fits"][4]["kv_tokens"] == 119_185 and doc["fits"][4]["sequences"] == 58
    assert doc["pool"]["verdict"] == "over-provisioned" and doc["demand"]["tokens"] == 61_440
    assert plan_model(M8B, None, CANDIDATES).to_dict()["pool"] is None
