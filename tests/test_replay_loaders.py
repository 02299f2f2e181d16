"""Loaders into the canonical workload: Azure CSV, Mooncake, length tables, VTC suites, ServeGen."""

from __future__ import annotations

import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from replay.loaders import (
    LengthTable,
    load_azure,
    load_length_table,
    load_mooncake,
    poisson_workload,
    vtc_overload,
    vtc_weighted,
)
from replay.servegen import busiest_hour, load_servegen, sample_servegen
from replay.workload import ALL_TENANTS, WorkloadFormatError, by_tenant, offered_load

TRACES = Path(__file__).resolve().parents[1].parent / "shared" / "traces"
AZURE_CONV = TRACES / "AzureLLMInferenceTrace_conv.csv"
AZURE_CODE = TRACES / "AzureLLMInferenceTrace_code.csv"
ARXIV = TRACES / "arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv"
MOONCAKE = TRACES / "synthetic_trace.jsonl"
SERVEGEN = TRACES / "ServeGen_language.tar.gz"


def _skip_absent(path: Path):
    return pytest.mark.skipif(not path.exists(), reason=f"{path} not present (shared traces absent)")


# ------------------------------------------------------------------ Azure


def test_azure_fixture(tmp_path):
    p = tmp_path / "azure.csv"
    p.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.6805900,374,44\n"
        "2023-11-16 18:15:50.9951690,396,109\n"
        "2023-11-16 18:15:46.1805900,10,0\n"  # out of order: earliest row defines t = 0
        "\n"
    )
    reqs = load_azure(p, tenant="conv", slo_class="interactive")
    assert [(r.timestamp_ms, r.input_length, r.output_length) for r in reqs] == [
        (0.0, 10, 0),
        (500.0, 374, 44),
        (4814.579, 396, 109),
    ]
    assert {(r.tenant, r.slo_class) for r in reqs} == {("conv", "interactive")}
    assert len(load_azure(p, limit=2)) == 2


def test_azure_bad_rows(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,374,x\n")
    with pytest.raises(WorkloadFormatError, match="line 2"):
        load_azure(p)
    q = tmp_path / "cols.csv"
    q.write_text("time,in,out\n1,2,3\n")
    with pytest.raises(WorkloadFormatError, match="expected columns"):
        load_azure(q)


@_skip_absent(AZURE_CONV)
def test_azure_conv_real_file():
    reqs = load_azure(AZURE_CONV, tenant="conv")
    assert len(reqs) == 19366
    load = offered_load(reqs)[ALL_TENANTS]
    # SOURCES.md: 3,502 s, 5.53 req/s, input mean 1155, output mean 211
    assert load.duration_s == pytest.approx(3502, abs=2)
    assert load.request_rate == pytest.approx(5.53, abs=0.02)
    assert load.mean_input_length == pytest.approx(1155, abs=1)
    assert load.mean_output_length == pytest.approx(211, abs=1)
    assert all(a.timestamp_ms <= b.timestamp_ms for a, b in zip(reqs, reqs[1:]))


@_skip_absent(AZURE_CODE)
def test_azure_code_real_file():
    reqs = load_azure(AZURE_CODE, tenant="code")
    assert len(reqs) == 8819
    assert offered_load(reqs)["code"].duration_s == pytest.approx(3436, abs=2)


# ------------------------------------------------------------------ Mooncake


def test_mooncake_loader_retags(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"timestamp": 3, "input_length": 600, "output_length": 5, "hash_ids": [1, 2]}\n')
    (r,) = load_mooncake(p)
    assert r.tenant == "default" and r.hash_ids == [1, 2]
    (r,) = load_mooncake(p, tenant="kimi", slo_class="batch")
    assert (r.tenant, r.slo_class, r.hash_ids) == ("kimi", "batch", [1, 2])


@_skip_absent(MOONCAKE)
def test_mooncake_real_file_single_tenant():
    reqs = load_mooncake(MOONCAKE)
    assert len(reqs) == 3993 and set(by_tenant(reqs)) == {"default"}


# ------------------------------------------------------------------ length tables


def test_length_table_and_poisson_fixture(tmp_path):
    p = tmp_path / "lengths.csv"
    p.write_text("num_prefill_tokens,num_decode_tokens,num_total_tokens,pd_ratio\n100,10,110,10\n300,30,330,10\n")
    table = load_length_table(p)
    assert len(table) == 2
    reqs = poisson_workload(table, rate=20.0, duration_s=500.0, seed=3, tenant="t")
    assert all(r.timestamp_ms < 500_000 for r in reqs)
    assert len(reqs) == pytest.approx(10_000, rel=0.05)  # sd ~1 %
    assert {(r.input_length, r.output_length) for r in reqs} == {(100, 10), (300, 30)}  # rows kept paired
    again = poisson_workload(table, rate=20.0, duration_s=500.0, seed=3, tenant="t")
    assert again == reqs
    other = poisson_workload(table, rate=20.0, duration_s=500.0, seed=4, tenant="t")
    assert other != reqs
    exact = poisson_workload(table, rate=2.0, num_requests=17, seed=1)
    assert len(exact) == 17
    gaps = np.diff([0.0] + [r.timestamp_ms for r in reqs]) / 1000
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.05)  # exponential: CV 1
    with pytest.raises(ValueError):
        poisson_workload(table, rate=1.0)
    with pytest.raises(WorkloadFormatError, match="column"):
        load_length_table(p, input_column="nope")


@_skip_absent(ARXIV)
def test_arxiv_length_table_real_file():
    table = load_length_table(ARXIV)
    assert len(table) == 28257
    assert np.median(table.inputs) == pytest.approx(2730, abs=5)
    assert np.median(table.outputs) == pytest.approx(167, abs=2)
    reqs = poisson_workload(table, rate=4.0, duration_s=600, seed=0, tenant="arxiv")
    load = offered_load(reqs, duration_s=600)["arxiv"]
    assert load.request_rate == pytest.approx(4.0, rel=0.1)


# ------------------------------------------------------------------ VTC suites


def test_vtc_overload_rates():
    reqs = vtc_overload()
    counts = Counter(r.tenant for r in reqs)
    assert counts == {"client0": 540, "client1": 1080}  # 1.5 and 3 req/s over 6 min
    assert {(r.input_length, r.output_length) for r in reqs} == {(256, 256)}
    for tenant, rate in (("client0", 1.5), ("client1", 3.0)):
        ts = np.array([r.timestamp_ms for r in reqs if r.tenant == tenant])
        assert np.allclose(np.diff(ts), 1000 / rate)
        assert 0 <= ts[0] < 2000 / rate and ts[-1] < 360_000 + 1000 / rate
    assert vtc_overload(duration_s=60, seed=1) != vtc_overload(duration_s=60, seed=2)
    assert vtc_overload(duration_s=60, seed=1) == vtc_overload(duration_s=60, seed=1)
    poisson = vtc_overload(duration_s=600, arrival="poisson")
    load = offered_load(poisson, duration_s=600)
    assert load["client0"].request_rate == pytest.approx(1.5, rel=0.1)
    assert load["client1"].request_rate == pytest.approx(3.0, rel=0.1)


def test_vtc_weighted_rates_and_weights():
    reqs, weights = vtc_weighted(duration_s=100)
    assert weights == {"client0": 1.0, "client1": 2.0, "client2": 3.0, "client3": 4.0}
    assert Counter(r.tenant for r in reqs) == {"client0": 80, "client1": 80, "client2": 120, "client3": 160}


# ------------------------------------------------------------------ ServeGen (generated fixture)


def _servegen_fixture(root: Path) -> Path:
    d = root / "ServeGen" / "data" / "language" / "m-tiny"
    d.mkdir(parents=True)
    # client 1: 0.5 req/s, then idle, then 2 req/s (Weibull); client 2: 1 req/s throughout (Gamma)
    (d / "chunk-1-trace.csv").write_text(
        "0,0.5,1.0,Gamma,1.0,2.0\n600,0,0,,0,0\n1200,2.0,1.5,Weibull,0.7,0.4\n1800,0.1,1.0,Gamma,1.0,10.0\n")
    (d / "chunk-2-trace.csv").write_text(
        "0,1.0,1.0,Gamma,1.0,1.0\n600,1.0,1.0,Gamma,1.0,1.0\n1200,1.0,1.0,Gamma,1.0,1.0\n"
        "1800,1.0,1.0,Gamma,1.0,1.0\n")
    # client 2 only has length PMFs (python dict literals; the first window empty)
    (d / "chunk-2-dataset.json").write_text(json.dumps({
        "0": {"input_tokens": "{}", "output_tokens": "{}"},
        "1200": {"input_tokens": "{10: 0.5, 30: 0.5}", "output_tokens": "{4: 1.0}"},
    }))
    return root


def test_servegen_fixture_format_and_sampling(tmp_path):
    root = _servegen_fixture(tmp_path)
    prof = load_servegen(root, group="m-tiny")
    assert prof.client_ids() == [1, 2] and prof.window_s == 600 and prof.horizon_s == 2400
    assert prof.clients[1].windows[1].dist == "" and prof.clients[1].windows[2].dist == "Weibull"
    assert prof.expected_requests(1) == pytest.approx(600 * (0.5 + 2.0 + 0.1))
    assert prof.top_clients() == [2, 1]  # 2400 vs 1560 expected requests
    assert prof.top_clients(1, 1200, 1800) == [1]
    assert prof.busiest_window(600) == 1200
    assert prof.busiest_window(600, clients=[2]) == 0  # ties: the earliest
    reqs = sample_servegen(prof, start_s=0, duration_s=2400, seed=5)
    groups = by_tenant(reqs)
    c1 = [r.timestamp_ms for r in groups["chunk-1"]]
    assert not any(600_000 <= t < 1_200_000 for t in c1)  # idle window: nothing
    assert len(c1) == pytest.approx(1560, abs=2)  # stochastic rounding per window: within 1 each
    assert len(groups["chunk-2"]) == pytest.approx(2400, abs=4)
    # client 2's own PMF (the empty first window borrows the next non-empty one)
    assert {(r.input_length, r.output_length) for r in groups["chunk-2"]} == {(10, 4), (30, 4)}
    assert all(r.extra == {} for r in groups["chunk-2"])
    # client 1 has no PMF: pooled from client 2
    assert {r.extra["length_source"] for r in groups["chunk-1"]} == {"pooled"}
    assert {r.output_length for r in groups["chunk-1"]} == {4}
    with pytest.raises(ValueError, match="no length distribution"):
        sample_servegen(prof, clients=[1], fallback_lengths=None)
    table = sample_servegen(prof, clients=[1], fallback_lengths=LengthTable.constant(7, 9), duration_s=600)
    assert {(r.input_length, r.output_length, r.extra["length_source"]) for r in table} == {(7, 9, "table")}
    # a window: rebased timestamps and only that span
    part = sample_servegen(prof, start_s=1200, duration_s=600, clients=[2], seed=5)
    assert all(0 <= r.timestamp_ms < 600_000 for r in part)


def test_servegen_fixture_from_tarball_and_errors(tmp_path):
    root = _servegen_fixture(tmp_path / "src")
    tar_path = tmp_path / "sg.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(root / "ServeGen", arcname="ServeGen")
    prof = load_servegen(tar_path, group="m-tiny", clients=[2])
    assert prof.client_ids() == [2]
    with pytest.raises(FileNotFoundError):
        load_servegen(tar_path, group="m-none")
    with pytest.raises(KeyError):
        load_servegen(tar_path, group="m-tiny", clients=[99])
    bad = tmp_path / "bad" / "language" / "m-bad"
    bad.mkdir(parents=True)
    (bad / "chunk-1-trace.csv").write_text("0,1.0,1.0,Gamma,1.0,1.0\n600,1.0,1.0,Poisson,1.0\n")
    with pytest.raises(WorkloadFormatError, match="line 2"):
        load_servegen(tmp_path / "bad", group="m-bad")


# ------------------------------------------------------------------ ServeGen (real archive)


@pytest.fixture(scope="module")
def m_small():
    if not SERVEGEN.exists():
        pytest.skip(f"{SERVEGEN} not present (shared traces absent)")
    return load_servegen(SERVEGEN, group="m-small")


def test_servegen_real_profile_shape(m_small):
    assert len(m_small.clients) == 43
    assert m_small.window_s == 600 and m_small.horizon_s == 14 * 24 * 3600
    assert sum(c.has_lengths for c in m_small.clients.values()) == 38
    top = m_small.top_clients(5)
    totals = [m_small.expected_requests(c) for c in top]
    assert totals == sorted(totals, reverse=True)
    assert totals[0] > m_small.expected_requests(m_small.top_clients()[-1])


def test_servegen_real_busiest_hour_rates_match_profile(m_small):
    top = m_small.top_clients(5)
    start = busiest_hour(m_small, top)
    assert start % 600 == 0
    hour = sum(m_small.expected_requests(c, start, start + 3600) for c in top)
    for s in range(0, m_small.horizon_s - 3600 + 1, 600 * 37):  # a sample of other hours is not busier
        assert sum(m_small.expected_requests(c, s, s + 3600) for c in top) <= hour + 1e-6
    scale = 0.01
    reqs = sample_servegen(m_small, start_s=start, duration_s=3600, clients=top, seed=11, rate_scale=scale)
    load = offered_load(reqs, duration_s=3600)
    assert set(load) == {f"chunk-{c}" for c in top} | {ALL_TENANTS}
    for c in top:
        expected = m_small.expected_rate(c, start, start + 3600) * scale
        got = load[f"chunk-{c}"].request_rate
        assert got == pytest.approx(expected, rel=0.02, abs=6 / 3600), c
    # lengths follow the client's own PMF where it has one
    own = [c for c in top if m_small.clients[c].has_lengths]
    assert own
    c = own[0]
    pin, pout = m_small.clients[c].length_pmfs(start)
    mean_in = float((pin[0] * np.diff(np.concatenate([[0.0], pin[1]]))).sum())
    assert load[f"chunk-{c}"].mean_input_length == pytest.approx(mean_in, rel=0.1)


def test_servegen_real_determinism(m_small):
    start = busiest_hour(m_small)
    kw = dict(start_s=start, duration_s=1200, top_n=4, rate_scale=0.005)
    a = sample_servegen(m_small, seed=1, **kw)
    b = sample_servegen(m_small, seed=1, **kw)
    c = sample_servegen(m_small, seed=2, **kw)
    assert a == b and a != c
    assert len({r.tenant for r in a}) == 4
    # one client's stream does not depend on which other clients are sampled
    cid = m_small.top_clients(4, start, start + 1200)[2]
    alone = sample_servegen(m_small, seed=1, start_s=start, duration_s=1200, clients=[cid], rate_scale=0.005,
                            fallback_lengths="pooled")
    assert [r for r in a if r.tenant == f"chunk-{cid}"] == alone
