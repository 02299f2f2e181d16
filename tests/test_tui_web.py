"""`sluice console --web` in a real browser: serve the console with textual-serve against the fake
admin API, open it in headless Chromium (tests/tui_browser.py) and check that the page's terminal
was given live data to draw. Skipped where no Chromium binary is installed."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.tui_browser import chromium, look
from tests.tui_fake_admin import FakeAdmin, fake_admin, free_port  # noqa: F401 - fake_admin is a fixture

pytestmark = pytest.mark.skipif(chromium() is None, reason="no Chromium binary (e.g. apt install chromium-headless-shell)")


def _wait_for_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"sluice console --web exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError("sluice console --web did not listen")


def test_console_served_to_a_browser_shows_live_data(fake_admin: FakeAdmin, tmp_path: Path) -> None:  # noqa: F811
    port = free_port()
    env = dict(os.environ, SLUICE_ADMIN_TOKEN=fake_admin.token)
    proc = subprocess.Popen([sys.executable, "-m", "tui", "--url", fake_admin.url, "--web", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for_port(port, proc)
        text, png = asyncio.run(look(f"http://127.0.0.1:{port}/",
                                     lambda t: "connected" in t and "sim-0" in t, size=(1400, 900)))
    finally:  # the server and the console it started for the page: its own process group
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    (tmp_path / "console.png").write_bytes(png)
    # the fake's state reached the browser: the connection mark, an engine, the server's clock
    assert "connected" in text and "sim-0" in text and "server time 08:26:40 UTC" in text
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (1400, 900)
