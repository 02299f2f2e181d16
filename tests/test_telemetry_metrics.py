"""Prometheus metrics: names, GenAI buckets, bounded tenant labels, GPU and store collectors."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from telemetry.metrics import TPOT_BUCKETS, TTFT_BUCKETS, Metrics


def families(m: Metrics) -> dict:
    text, ctype = m.render()
    assert ctype.startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(text.decode())}


def samples(fams, name):
    return [(s.name, s.labels, s.value) for f in fams.values() for s in f.samples if s.name == name]


def value(fams, metric, **labels):
    for _, s_labels, v in samples(fams, metric):
        if s_labels == labels:
            return v
    raise KeyError((metric, labels))


def row(tenant="acme", **over):
    r = {"tenant": tenant, "slo_class": "interactive", "status": "ok", "ttft_ms": 150.0, "tpot_ms": 30.0,
         "prompt_tokens": 100, "completion_tokens": 20, "cached_tokens": 64, "predicted_ttft_ms": 120.0,
         "predicted_tpot_ms": 30.0, "predicted_output_tokens": 25}
    r.update(over)
    return r


def test_request_metrics_and_genai_buckets():
    m = Metrics()
    m.observe_request(row())
    m.observe_request(row(status="rejected", ttft_ms=None, tpot_ms=None, prompt_tokens=0, completion_tokens=0,
                          cached_tokens=0))
    f = families(m)
    assert value(f, "sluice_requests_total", tenant="acme", slo_class="interactive", outcome="ok", pool="") == 1
    assert value(f, "sluice_requests_total", tenant="acme", slo_class="interactive", outcome="rejected", pool="") == 1
    assert value(f, "sluice_tokens_total", tenant="acme", kind="prompt", pool="") == 100
    assert value(f, "sluice_tokens_total", tenant="acme", kind="cached", pool="") == 64
    ttft_les = [s[1]["le"] for s in samples(f, "sluice_ttft_seconds_bucket")]
    assert ttft_les == [str(b) for b in TTFT_BUCKETS] + ["+Inf"]
    tpot_les = [s[1]["le"] for s in samples(f, "sluice_tpot_seconds_bucket")]
    assert tpot_les == [str(b) for b in TPOT_BUCKETS] + ["+Inf"]
    assert value(f, "sluice_ttft_seconds_bucket", tenant="acme", slo_class="interactive", pool="", le="0.25") == 1
    assert value(f, "sluice_ttft_seconds_bucket", tenant="acme", slo_class="interactive", pool="", le="0.1") == 0
    # the row's predictions are not forecast errors here: those come once, from where the predictors learn
    assert not samples(f, "sluice_forecast_error_count")


def test_forecast_error_is_the_absolute_percentage_error():
    m = Metrics()
    m.observe_forecast("ttft", 120.0, 150.0)  # |120-150|/150 = 0.2
    m.observe_forecast("tpot", 30.0, 30.0)
    m.observe_forecast("output_tokens", 25, 20)  # 0.25
    m.observe_forecast("ttft", 1.0, 0.0)  # no actual: no error to speak of
    m.observe_forecast("ttft", None, 1.0)
    f = families(m)
    assert value(f, "sluice_forecast_error_sum", kind="ttft") == 0.2
    assert value(f, "sluice_forecast_error_count", kind="ttft") == 1
    assert value(f, "sluice_forecast_error_sum", kind="tpot") == 0.0
    assert value(f, "sluice_forecast_error_sum", kind="output_tokens") == 0.25


def test_tenant_labels_are_bounded_first_seen():
    m = Metrics(max_tenants=3)
    for i in range(10):
        m.observe_request(row(tenant=f"t{i}"))
    m.set_queue_depths({f"t{i}": 1 for i in range(10)})
    f = families(m)
    tenants = {s[1]["tenant"] for s in samples(f, "sluice_requests_total")}
    assert tenants == {"t0", "t1", "t2", "other"}
    assert value(f, "sluice_requests_total", tenant="other", slo_class="interactive", outcome="ok", pool="") == 7
    assert value(f, "sluice_queue_depth", tenant="other", pool="") == 7
    m.set_queue_depths({"t1": 4})  # tenants no longer queued read 0
    f = families(m)
    assert value(f, "sluice_queue_depth", tenant="t1", pool="") == 4
    assert value(f, "sluice_queue_depth", tenant="t0", pool="") == 0 \
        and value(f, "sluice_queue_depth", tenant="other", pool="") == 0


def test_decisions_engines_gpus_and_store():
    m = Metrics()
    m.observe_decision("reject", "slo_unattainable")
    m.set_in_flight("sim-0", 12, "llama")
    m.set_engine_load("sim-0", running=12, waiting=3, kv_usage=0.43, pool="llama")
    m.set_gpu_samples([{"gpu": 0, "name": "H100", "power_w": 410.0, "energy_j": 123456.0, "sm_clock_mhz": 1980,
                        "utilization": 0.93, "memory_used_bytes": 7e10}])
    m.bind_store(lambda: {"lag_s": 0.5, "pending": {"requests": 3}, "written": {"requests": 10},
                          "dropped": {"requests": 1}, "write_failures": 2})
    f = families(m)
    assert value(f, "sluice_admission_decisions_total", decision="reject", reason="slo_unattainable") == 1
    assert value(f, "sluice_in_flight", engine="sim-0", pool="llama") == 12
    assert value(f, "sluice_engine_kv_usage", engine="sim-0", pool="llama") == 0.43
    assert value(f, "sluice_engine_waiting", engine="sim-0", pool="llama") == 3
    assert value(f, "sluice_gpu_power_watts", gpu="0", name="H100") == 410.0
    assert value(f, "sluice_gpu_energy_joules_total", gpu="0", name="H100") == 123456.0
    assert value(f, "sluice_gpu_utilization", gpu="0", name="H100") == 0.93
    assert value(f, "sluice_store_lag_seconds") == 0.5
    assert value(f, "sluice_store_dropped_rows_total", table="requests") == 1
    assert value(f, "sluice_store_pending_rows", table="requests") == 3


def test_a_failing_store_never_breaks_the_scrape():
    m = Metrics()

    def broken():
        raise RuntimeError("closed")

    m.bind_store(broken)
    assert "sluice_store_lag_seconds" in families(m)


def test_registries_are_independent():
    a, b = Metrics(), Metrics()
    a.observe_decision("admit", "fits")
    assert samples(families(b), "sluice_admission_decisions_total") == []
