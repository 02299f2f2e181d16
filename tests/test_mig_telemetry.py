"""MIG-aware telemetry against the fake NVML with a MIG layout: instances enumerated (mode, profile,
per-instance memory; no utilisation, as NVML gives none), stored, exported, and an engine bound to a
MIG instance checked at start-up."""
from __future__ import annotations

import duckdb
import pytest

from controlplane.config import ConfigError, parse_config
from sluice.server import StartupError, check_mig_bindings, create_app
from telemetry.metrics import Metrics
from telemetry.nvml import SAMPLE_KEYS, GpuSampler, mig_profile, unknown_mig_bindings
from telemetry.store import Store
from tests.fake_nvml import MIB, FakeNvml, NVMLError_LibraryNotFound, h100_layout
from tests.test_telemetry_metrics import families, samples, value

UUID_3G = "MIG-3b2c9f60-0001-5e0e-9a1c-6b1f00000001"


def mig_rows(rows):
    return [r for r in rows if r["mig"]]


def test_instances_of_a_mig_gpu_are_rows_of_their_own():
    rows = GpuSampler(FakeNvml(count=2, mig=h100_layout()), clock=lambda: 5.0).sample()
    assert all(set(r) == set(SAMPLE_KEYS) for r in rows)
    gpu0, gpu1 = (next(r for r in rows if r["gpu"] == i and not r["mig"]) for i in (0, 1))
    assert gpu0["mig_mode"] is True and gpu1["mig_mode"] is False
    # NVML: utilisation is not supported on a MIG-enabled GPU; the GPU keeps its power and clock
    assert gpu0["utilization"] is None and gpu0["power_w"] == 412.345 and gpu0["sm_clock_mhz"] == 1980
    assert gpu1["utilization"] == 0.93
    instances = mig_rows(rows)
    # the empty slot (index 2) is skipped, the rest in NVML's order, under their parent
    assert [r["mig_profile"] for r in instances] == ["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"]
    assert rows.index(gpu0) < rows.index(instances[0]) and all(r["gpu"] == 0 for r in instances)
    first = instances[0]
    assert first["mig"] == UUID_3G and first["name"] == "NVIDIA H100 80GB HBM3 MIG 3g.40gb"
    assert first["memory_total_bytes"] == 40448 * MIB and first["memory_used_bytes"] == 20_000 * MIB
    assert (first["gpu_instance_id"], first["compute_instance_id"]) == (2, 0)
    # an instance has memory only: no utilisation, power, energy, clock or limit of its own
    assert all(first[k] is None for k in ("utilization", "power_w", "energy_j", "sm_clock_mhz", "power_limit_w"))
    assert first["ts"] == 5.0 and first["simulated"] is False


def test_a_profile_from_the_instance_attributes_when_its_name_lacks_one():
    rows = GpuSampler(FakeNvml(count=1, mig=h100_layout(), profile_in_name=False)).sample()
    # 40448 MiB -> 40 GB, 20096 -> 20, 9984 -> 10: NVIDIA's names round the usable memory up
    assert [r["mig_profile"] for r in mig_rows(rows)] == ["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"]


def test_a_compute_instance_smaller_than_its_gpu_instance_is_named_so():
    layout = h100_layout()
    layout[0][0].ci_slices = 1  # one compute slice of the 3g GPU instance
    assert mig_rows(GpuSampler(FakeNvml(count=1, mig=layout, profile_in_name=False)).sample())[0]["mig_profile"] \
        == "1c.3g.40gb"
    assert mig_profile("NVIDIA A100-SXM4-40GB MIG 1c.3g.20gb") == "1c.3g.20gb"
    assert mig_profile("NVIDIA H100 80GB HBM3") is None


class Counting(FakeNvml):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.mode_calls = 0

    def nvmlDeviceGetMigMode(self, h):
        self.mode_calls += 1
        return super().nvmlDeviceGetMigMode(h)


def test_a_gpu_without_mig_is_asked_once_and_reads_none():
    nv = Counting(count=1, unsupported={"mig"})
    s = GpuSampler(nv)
    for _ in range(3):
        rows = s.sample()
    assert rows[0]["mig_mode"] is None and len(rows) == 1 and nv.mode_calls == 1


def test_the_layout_is_read_again_each_sample():
    nv = FakeNvml(count=1, mig=h100_layout())
    s = GpuSampler(nv)
    assert len(mig_rows(s.sample())) == 4
    nv.mig[0][4] = None  # an operator destroyed an instance
    assert len(mig_rows(s.sample())) == 3
    nv.mig.clear()  # ... and disabled MIG
    rows = s.sample()
    assert rows[0]["mig_mode"] is False and not mig_rows(rows)


def test_instance_rows_are_stored_and_an_older_file_gains_the_columns(tmp_path):
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))  # a gpu_samples table as sluice wrote it before MIG
    con.execute("CREATE TABLE gpu_samples (ts DOUBLE, gpu BIGINT, name VARCHAR, simulated BOOLEAN, power_w DOUBLE, "
                "energy_j DOUBLE, sm_clock_mhz DOUBLE, utilization DOUBLE, memory_used_bytes BIGINT, "
                "memory_total_bytes BIGINT, power_limit_w DOUBLE)")
    con.execute("INSERT INTO gpu_samples (ts, gpu, name) VALUES (1.0, 0, 'H100')")
    con.close()
    store = Store(path, flush_interval_s=0.05)
    try:
        store.record_gpu_samples(GpuSampler(FakeNvml(count=1, mig=h100_layout()), clock=lambda: 2.0).sample())
        assert store.flush()
        cur = store.cursor()
        got = cur.execute("SELECT ts, gpu, mig_mode, mig, mig_profile, gpu_instance_id, memory_total_bytes "
                          "FROM gpu_samples ORDER BY ts, mig NULLS FIRST").fetchall()
        cur.close()
    finally:
        store.close()
    assert got[0] == (1.0, 0, None, None, None, None, None)  # the old row: NULL in the new columns
    assert got[1][:4] == (2.0, 0, True, None)
    assert (got[2][3], got[2][4], got[2][5], got[2][6]) == (UUID_3G, "3g.40gb", 2, 40448 * MIB)
    assert len(got) == 6


def test_metrics_carry_instances_in_families_of_their_own():
    m = Metrics()
    m.set_gpu_samples(GpuSampler(FakeNvml(count=2, mig=h100_layout())).sample())
    f = families(m)
    name = "NVIDIA H100 80GB HBM3"
    assert value(f, "sluice_gpu_mig_mode", gpu="0", name=name) == 1 and value(f, "sluice_gpu_mig_mode", gpu="1",
                                                                               name=name) == 0
    assert value(f, "sluice_gpu_mig_memory_total_bytes", gpu="0", mig=UUID_3G, profile="3g.40gb") == 40448 * MIB
    assert value(f, "sluice_gpu_mig_memory_used_bytes", gpu="0", mig=UUID_3G, profile="3g.40gb") == 20_000 * MIB
    assert len(samples(f, "sluice_gpu_mig_memory_total_bytes")) == 4
    # the whole-GPU families are unchanged: one series per GPU, so a sum counts no memory twice
    assert [s[1] for s in samples(f, "sluice_gpu_memory_used_bytes")] == [{"gpu": "0", "name": name},
                                                                          {"gpu": "1", "name": name}]
    assert len(samples(f, "sluice_gpu_power_watts")) == 2


def test_a_binding_to_an_instance_nvml_lists_passes():
    config = parse_config({"engines": [{"name": "e0", "kind": "sim", "mig": UUID_3G}]})
    check_mig_bindings(config, GpuSampler(FakeNvml(count=1, mig=h100_layout())))  # no error


def test_a_binding_to_an_unknown_instance_is_refused_at_start_up():
    config = parse_config({"engines": [{"name": "e0", "kind": "sim", "mig": "MIG-00000000-dead-beef"}]})
    with pytest.raises(StartupError) as err:
        check_mig_bindings(config, GpuSampler(FakeNvml(count=1, mig=h100_layout())))
    text = str(err.value)
    assert "engine 'e0': mig = 'MIG-00000000-dead-beef' is not a MIG instance NVML lists" in text
    assert f"{UUID_3G} (GPU 0 3g.40gb)" in text and "nvidia-smi -L" in text


def test_without_a_gpu_the_refusal_says_so():
    rows = GpuSampler(FakeNvml(init_error=NVMLError_LibraryNotFound("NVML Shared Library Not Found")))
    problems = unknown_mig_bindings({"e0": "MIG-x"}, rows.sample(), rows.status)
    assert problems and "instances: none: no GPU: " in problems[0] and "Library Not Found" in problems[0]
    no_mig = GpuSampler(FakeNvml(count=1))
    assert "none: no GPU has MIG enabled" in unknown_mig_bindings({"e0": "MIG-x"}, no_mig.sample(), "ok")[0]


def test_create_app_checks_the_binding_before_opening_anything(tmp_path):
    config = parse_config({"server": {"db_path": str(tmp_path / "s.duckdb")},
                           "engines": [{"name": "e0", "kind": "sim", "mig": "MIG-not-on-this-machine"}]})
    with pytest.raises(StartupError, match="engine 'e0': mig = 'MIG-not-on-this-machine' is not a MIG instance"):
        create_app(config)  # this machine's real NVML: no GPU, or none with that instance
    assert not (tmp_path / "s.duckdb").exists()


@pytest.mark.parametrize(("engine", "message"), [
    ({"mig": "GPU-5d3c"}, "mig must be a MIG instance's UUID"),
    ({"mig": "MIG-5d3c", "gpu": 0}, "give gpu or mig, not both"),
    ({"gpu": "0"}, "gpu must be an NVML index"),
])
def test_the_config_refuses_a_malformed_binding(engine, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({"engines": [{"name": "e0", "kind": "sim", **engine}]})
