"""Replay with scaling (replay/autoscale.py) on small workloads: sluice's capacity rule and the two
baselines (a fixed fleet, an HPA on GPU utilisation) add and remove simulated engines; cold and
warm starts and scale to zero are accounted in GPU-seconds and energy."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from controlplane.core.capacity import Behaviour, CapacityParams
from replay.autoscale import Scaling, run_autoscaled
from replay.runner import default_policy
from replay.workload import WorkloadRequest

POLICY = default_policy("fcfs", admission=True, weights={"a": 1.0, "b": 1.0})
FAST = Behaviour(down_window_s=20.0, period_s=5.0)


def phases(*spans: tuple[float, float], seed: int = 0) -> list[WorkloadRequest]:
    """Poisson arrivals at each (seconds, req/s) in turn; two tenants, 600-token prompts, ~250 out."""
    rng = np.random.default_rng(seed)
    out, t0 = [], 0.0
    for span, rate in spans:
        if rate > 0:
            n = rng.poisson(span * rate)
            for t in np.sort(rng.uniform(t0, t0 + span, n)):
                out.append(WorkloadRequest(float(t * 1e3), int(rng.integers(300, 900)), int(rng.integers(150, 350)),
                                           "a" if rng.random() < 0.5 else "b", "interactive", max_tokens=512))
        t0 += span
    return out


def run(workload: list[WorkloadRequest], mode: str, **kw: object):  # type: ignore[no-untyped-def]
    scaling = Scaling(mode=mode, behaviour=kw.pop("behaviour", FAST), **kw)  # type: ignore[arg-type]
    return run_autoscaled(workload, POLICY, scaling, torch_expert=False)


@pytest.fixture(scope="module")
def burst() -> list[WorkloadRequest]:
    # light, a burst of several engines' worth, light again
    return phases((40.0, 10.0), (60.0, 90.0), (60.0, 10.0))


def test_sluice_scales_up_for_a_burst_and_back_down(burst: list[WorkloadRequest]) -> None:
    # the proportional headroom alone (no burst reserve): the burst outgrows the fleet, as it would the reserve
    result, fleet = run(burst, "sluice", initial=1, cold_start_s=10.0, warm_start_s=2.0,
                        params=CapacityParams(burst_reserve=0.0))
    desired = [d for _, d, _ in fleet.timeline]
    assert max(desired) >= 3 and fleet.peak >= 3
    assert desired[-1] < max(desired)  # down again once the burst is over
    assert fleet.actions >= 2 and fleet.started >= 2 and fleet.stopped >= 1
    # every replica held counts from its provisioning: more than the serving time alone
    assert fleet.gpu_seconds > result.makespan_s
    # what is refused is refused while the new replicas load: from the burst's onset (40 s) to one
    # evaluation period, the cold start and a few seconds of draining the queue later, never after
    refused = [r.arrival_s for r in result.records if r.status == "rejected"]
    assert refused and min(refused) >= 40.0 and max(refused) <= 40.0 + 5.0 + 10.0 + 5.0
    assert result.per_class["interactive"].slo_attainment_admitted > 0.99


def test_the_burst_reserve_serves_a_burst_while_replicas_load(burst: list[WorkloadRequest]) -> None:
    """Square-root staffing keeps spare replicas at a small fleet: the burst's onset, while the
    replicas asked for are still loading, is served by them instead of refused; at a price in
    GPU-seconds. (Before the reserve, the rule ran as burst_reserve=0.)"""
    bare, f_bare = run(burst, "sluice", initial=1, cold_start_s=10.0, warm_start_s=2.0,
                        params=CapacityParams(burst_reserve=0.0))
    kept, f_kept = run(burst, "sluice", initial=1, cold_start_s=10.0, warm_start_s=2.0)
    refused = {label: sum(r.status == "rejected" for r in res.records) for label, res in (("bare", bare), ("kept", kept))}
    assert refused["bare"] >= 10 and refused["kept"] <= refused["bare"] // 4, refused
    assert kept.overall.slo_attainment > bare.overall.slo_attainment
    assert f_bare.gpu_seconds < f_kept.gpu_seconds
    # in the lull before the burst the reserve holds more than the load needs
    before = lambda f: max(d for t, d, _ in f.timeline if t < 40.0)  # noqa: E731
    assert before(f_kept) > before(f_bare)


def test_against_the_baselines() -> None:
    """A diurnal-like ramp up and down under the three controllers: sluice holds the fixed
    fleet's attainment with fewer GPU-seconds than it and than the utilisation HPA (whose GPU
    utilisation reads busy whenever anything decodes, so it only grows)."""
    ramp = phases(*((20.0, float(r)) for r in (10, 30, 50, 70, 90, 70, 50, 30, 10)))
    sluice, f_s = run(ramp, "sluice", initial=1, cold_start_s=10.0, warm_start_s=2.0)
    util, f_u = run(ramp, "utilisation", initial=1, cold_start_s=10.0, warm_start_s=2.0)
    fixed, f_f = run(ramp, "fixed", initial=f_s.peak)
    assert f_f.actions == 0 and f_f.started == 0
    assert f_f.gpu_seconds == pytest.approx(f_s.peak * fixed.makespan_s)
    assert f_s.gpu_seconds < 0.9 * f_f.gpu_seconds
    assert f_s.gpu_seconds < f_u.gpu_seconds
    assert f_u.actions >= 1
    assert sluice.overall.slo_attainment >= fixed.overall.slo_attainment - 0.02
    for f in (f_s, f_u, f_f):  # idle power at least, for every GPU-second held
        assert f.energy_j >= 70.0 * f.gpu_seconds * 0.999


def test_warm_start_after_a_release_is_cheaper() -> None:
    # a burst, a lull long enough to release replicas, a second burst within the warm-keep time
    wl = phases((40.0, 90.0), (60.0, 2.0), (40.0, 90.0))
    _, warm = run(wl, "sluice", initial=1, cold_start_s=20.0, warm_start_s=2.0, warm_keep_s=600.0)
    _, cold = run(wl, "sluice", initial=1, cold_start_s=20.0, warm_start_s=2.0, warm_keep_s=0.0)
    assert warm.warm_starts >= 1 and cold.warm_starts == 0


def test_scale_to_zero_and_back() -> None:
    wl = phases((30.0, 5.0), (120.0, 0.0), (30.0, 5.0))
    result, fleet = run(wl, "sluice", initial=1, cold_start_s=5.0,
                        params=CapacityParams(idle_to_zero_s=30.0, min_replicas=0))
    serving = [s for _, _, s in fleet.timeline]
    assert 0 in serving and serving[-1] >= 1  # went to zero in the lull, back for the second phase
    # arrivals while nothing serves are refused (interactive: no engine to meet the TTFT), the rest served
    statuses = result.status_counts()
    assert statuses["ok"] > 0.7 * len(wl)
    # min_replicas=1 never goes to zero
    _, kept = run(wl, "sluice", initial=1, cold_start_s=5.0, params=CapacityParams(idle_to_zero_s=30.0, min_replicas=1))
    assert min(s for _, _, s in kept.timeline) >= 1
    # the idle minutes were not held: over a minute of the lull at zero where the floor holds one
    assert fleet.gpu_seconds < kept.gpu_seconds - 60.0


def test_simulate_autoscale_cli(capsys: pytest.CaptureFixture[str]) -> None:
    from replay.simulate import simulate_main

    rc = simulate_main(["--workload", "vtc-overload", "--policy", "fcfs", "--admission", "--duration", "20",
                        "--autoscale", "all", "--no-torch", "--cold-start", "5", "--down-window", "10"])
    out = capsys.readouterr().out
    assert rc == 0
    for mode in ("sluice", "utilisation", "fixed"):
        assert f"fcfs+admission/{mode}" in out
    assert "GPU-s" in out and "energy kJ" in out


def _peaks(out: str) -> dict[str, int]:
    """run label -> peak fleet, from `format_fleets`' table."""
    rows = [line.split() for line in out.splitlines() if line.strip().startswith("fcfs")]
    return {r[0]: int(r[-1]) for r in rows if len(r) == 8}


def test_simulate_autoscale_honours_the_configs_capacity_table(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--config`'s [capacity] table is what the rule runs with (as `sluice serve` would); the
    replica-bound flags override it only where given; a bad combination is refused, named."""
    from replay.simulate import simulate_main

    cfg = tmp_path / "sluice.toml"
    cfg.write_text("[capacity]\nmin_replicas = 3\n")
    base = ["--workload", "vtc-overload", "--policy", "fcfs", "--admission", "--duration", "20",
            "--autoscale", "sluice", "--no-torch", "--cold-start", "5", "--down-window", "10"]
    assert simulate_main(base) == 0
    assert _peaks(capsys.readouterr().out) == {"fcfs+admission/sluice": 2}  # this light load: one and a spare
    assert simulate_main([*base, "--burst-reserve", "0"]) == 0
    assert _peaks(capsys.readouterr().out) == {"fcfs+admission/sluice": 1}  # without the reserve: one
    assert simulate_main([*base, "--config", str(cfg)]) == 0
    assert _peaks(capsys.readouterr().out) == {"fcfs+admission/sluice": 3}  # the config's floor of 3
    assert simulate_main([*base, "--config", str(cfg), "--min-replicas", "1", "--burst-reserve", "0"]) == 0
    assert _peaks(capsys.readouterr().out) == {"fcfs+admission/sluice": 1}
    with pytest.raises(SystemExit, match=r"burst_reserve must be in \[0, inf\], got -1.0"):
        simulate_main([*base, "--burst-reserve", "-1"])
    with pytest.raises(SystemExit, match=r"max_replicas \(2\) must be >= 1 and >= min_replicas \(3\)"):
        simulate_main([*base, "--config", str(cfg), "--max-replicas", "2"])
