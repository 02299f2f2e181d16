"""Serving does not wait for torch: `Sluice.start()` returns while the output-length predictor's MLP
expert is still being prepared (its imports run on the trainer thread), and the expert trains once
they are done."""
from __future__ import annotations

import asyncio
import threading

from controlplane.predict import OutputLengthPredictor
from controlplane.service import Sluice
from engine_adapter.sim.engine import SimEngine
from tests.gateway_fixtures import make_config


class GatedPredictor(OutputLengthPredictor):
    """prepare() waits for `release`, as a slow torch import would."""

    def __init__(self) -> None:
        super().__init__(seed=0, torch_expert=True, mlp_options={"min_samples": 8, "batch_size": 8})
        self.release = threading.Event()
        self.prepared = threading.Event()

    def prepare(self) -> bool:
        self.release.wait(30)
        ok = super().prepare()
        self.prepared.set()
        return ok


def test_start_serves_before_the_mlp_expert_is_ready_and_trains_it_after(tmp_path):
    predictor = GatedPredictor()
    sluice = Sluice(make_config(tmp_path, ["sim-0"]), {"sim-0": SimEngine("sim-0")}, predictor=predictor)

    async def main() -> None:
        await asyncio.wait_for(sluice.start(), 10)  # returns although prepare() is blocked
        assert sluice.pool.infos["sim-0"].simulated and not predictor.prepared.is_set()
        assert predictor.predict("acme", 100, 500).by_expert.get("mlp") is None  # cold meanwhile
        for i in range(16):
            predictor.observe("acme", 100 + i, 500, None, 50 + i)
        predictor.release.set()
        assert await asyncio.to_thread(predictor.prepared.wait, 120)  # torch's import: seconds, once
        assert predictor.mlp is not None and predictor.mlp.error is None
        deadline = asyncio.get_running_loop().time() + 30
        while predictor.mlp.version == 0:  # the trainer wakes every second
            assert asyncio.get_running_loop().time() < deadline, "the MLP expert was never trained"
            await asyncio.sleep(0.05)
        assert predictor.predict("acme", 100, 500).by_expert.get("mlp") is not None
        await sluice.stop()

    asyncio.run(main())
