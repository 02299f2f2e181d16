"""Background training of the output-length model's torch expert, on a thread of its own.

Never on the event loop: the thread imports torch first (seconds), and the server serves meanwhile,
the MLP expert cold (it answers only once trained) and the other experts answering.
"""
from __future__ import annotations

import gc
import logging
import threading
import time

from controlplane.predict.output_length import OutputLengthPredictor

log = logging.getLogger("sluice")

# The trainer may use at most this share of one core (wall time of its steps): at high request
# rates it would otherwise train up to its step cap every second, on the core that serves requests.
TRAIN_SHARE = 0.1

__all__ = ["TRAIN_SHARE", "PredictorTrainer"]


class PredictorTrainer:
    def __init__(self, predictor: OutputLengthPredictor) -> None:
        self.predictor = predictor
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.predictor.mlp is None:
            return  # nothing to train in the background
        self._thread = threading.Thread(target=self._run, name="sluice-trainer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Asks the thread to end (a daemon: it never holds the process up)."""
        self._stop.set()

    def _run(self) -> None:
        if self._stop.is_set() or not self.predictor.prepare():
            mlp = self.predictor.mlp
            if not self._stop.is_set():  # (an import cut short by the shutdown is no news)
                log.warning("output-length predictor: the MLP expert stays cold (%s)", mlp and mlp.error)
            return
        # torch's modules live as long as the process: out of the cyclic GC's reach, as the
        # server's start-up does for everything before them (sluice/server.py, lifespan)
        gc.freeze()
        wait = 1.0
        while not self._stop.wait(wait):
            t0 = time.perf_counter()
            try:
                self.predictor.train_pending(64)
            except Exception:  # a training failure must never take serving down
                log.exception("output-length trainer step failed")
            busy = time.perf_counter() - t0
            wait = max(1.0, busy * (1.0 - TRAIN_SHARE) / TRAIN_SHARE)
