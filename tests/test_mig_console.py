"""The console's GPU view with a MIG GPU: each instance under its GPU, with its profile and memory."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.fake_nvml import FakeNvml, h100_layout
from tests.test_tui_console import SIZE, loaded, make_app
from tests.tui_fake_admin import FakeAdmin, serve_fake, wait_until
from telemetry.nvml import GpuSampler
from tui.overview import power_limit

READINGS = GpuSampler(FakeNvml(count=1, mig=h100_layout()), clock=lambda: 1.0).sample()


class MigAdmin(FakeAdmin):
    def state(self) -> dict[str, Any]:
        gpus = [dict(r, power_limit_w=700.0) if not r["mig"] else r for r in READINGS]
        return {**super().state(), "gpus": gpus}


@pytest.fixture
def mig_admin() -> Iterator[FakeAdmin]:
    yield from serve_fake(MigAdmin())


def test_an_instance_row_carries_no_power_limit_of_its_own() -> None:
    gpus = [dict(r, power_limit_w=700.0) if not r["mig"] else r for r in READINGS]
    assert power_limit(gpus) == 700.0  # the GPU's; the instances' rows (no limit) do not void it


async def test_instances_are_listed_under_their_gpu(mig_admin: FakeAdmin) -> None:
    app = make_app(mig_admin)
    async with app.run_test(size=SIZE) as pilot:
        table = app.query_one("#gpus")
        await wait_until(pilot, lambda: table.row_count == 5, "GPU rows")
        # the first load complete (the policy history too) before the app closes: a reply landing
        # during shutdown finds the policy pane gone (a console race, not this view's)
        await loaded(pilot, app)
        await wait_until(pilot, lambda: app.query_one("#history").row_count == 3, "history")
        keys = table.row_keys
        assert keys[0] == "0" and keys[1] == "0/MIG-3b2c9f60-0001-5e0e-9a1c-6b1f00000001"
        cells = table.cells_of(keys[1])
        assert str(cells[1]) == "└ MIG 3g.40gb GI 2"
        assert cells[-1] == "20/40"  # GiB used/total: 20,000 MiB of 40,448
        assert "n/a under MIG" in str(cells[-2])
