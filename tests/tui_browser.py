"""A headless Chromium driven over the DevTools protocol (aiohttp's websocket client), for the
browser test of the console (tests/test_tui_web.py) and for looking at it by hand:

    .venv/bin/python -m tests.tui_browser http://127.0.0.1:8000/ /tmp/console.png
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

import aiohttp

CHROMIUM_NAMES = ("chromium-headless-shell", "headless_shell", "chromium", "chromium-browser", "google-chrome")
# textual-serve draws the terminal on a canvas (xterm.js, WebGL or 2D): there is no text in the
# DOM. This script, installed before the page's own, keeps what its websocket receives (the
# console's screen output) so that the test can read the text the page was given to draw.
CAPTURE = """(() => {
  window.__received = '';
  const decoder = new TextDecoder();
  const Native = window.WebSocket;
  window.WebSocket = function (...args) {
    const ws = new Native(...args);
    ws.addEventListener('message', (e) => {
      const d = e.data;
      if (typeof d === 'string') window.__received += d;
      else if (d instanceof ArrayBuffer) window.__received += decoder.decode(d);
      else if (d && d.arrayBuffer) d.arrayBuffer().then((b) => { window.__received += decoder.decode(b); });
      if (window.__received.length > 4000000) window.__received = window.__received.slice(-2000000);
    });
    return ws;
  };
  window.WebSocket.prototype = Native.prototype;
  Object.assign(window.WebSocket, Native);
})()"""
# the received text without ANSI control sequences
TERMINAL_TEXT = r"(window.__received || '').replace(/\x1b\[[0-9;?]*[ -\/]*[@-~]/g, '').replace(/\x1b[()][0-9A-B]/g, '')"


def chromium() -> str | None:
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Page:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse, session: str) -> None:
        self.ws, self.session, self.ids = ws, session, itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        i = next(self.ids)
        await self.ws.send_str(json.dumps({"id": i, "method": method, "params": params, "sessionId": self.session}))
        while True:
            msg = json.loads((await self.ws.receive()).data)
            if msg.get("id") == i:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return dict(msg.get("result") or {})

    async def text(self) -> str:
        result = await self.call("Runtime.evaluate", expression=TERMINAL_TEXT, returnByValue=True)
        return str((result.get("result") or {}).get("value") or "")


async def look(url: str, until: Any, *, size: tuple[int, int] = (1400, 900), wait_s: float = 90.0
               ) -> tuple[str, bytes]:
    """Open `url` in headless Chromium; once `until(terminal text)` holds (or after `wait_s`),
    return the text the page's terminal received and a PNG screenshot."""
    binary = chromium()
    if binary is None:
        raise RuntimeError("no Chromium binary")
    port = _free_port()
    with tempfile.TemporaryDirectory() as profile:
        # its own process group: Debian's chromium-headless-shell is a shell script that runs the
        # browser as its child, so terminating the script alone left the browser running
        proc = subprocess.Popen([binary, "--headless", "--no-sandbox", "--disable-gpu", f"--remote-debugging-port={port}",
                                 f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}", "about:blank"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            async with aiohttp.ClientSession() as http:
                for _ in range(200):
                    try:
                        async with http.get(f"http://127.0.0.1:{port}/json/version") as r:
                            browser_ws = (await r.json())["webSocketDebuggerUrl"]
                        break
                    except aiohttp.ClientError:
                        await asyncio.sleep(0.1)
                else:
                    raise RuntimeError("Chromium did not open its DevTools port")
                async with http.ws_connect(browser_ws, max_msg_size=0) as ws:
                    root = Page(ws, "")
                    target = await _browser_call(root, "Target.createTarget", url="about:blank")
                    attached = await _browser_call(root, "Target.attachToTarget", targetId=target["targetId"],
                                                   flatten=True)
                    page = Page(ws, attached["sessionId"])
                    await page.call("Emulation.setDeviceMetricsOverride", width=size[0], height=size[1],
                                    deviceScaleFactor=1, mobile=False)
                    await page.call("Page.enable")
                    await page.call("Page.addScriptToEvaluateOnNewDocument", source=CAPTURE)
                    await page.call("Page.navigate", url=url)
                    deadline = time.monotonic() + wait_s
                    text = ""
                    while time.monotonic() < deadline:
                        text = await page.text()
                        if until(text):
                            await asyncio.sleep(1.0)  # let the frame finish drawing
                            text = await page.text()
                            break
                        await asyncio.sleep(0.5)
                    shot = await page.call("Page.captureScreenshot", format="png")
                    return text, base64.b64decode(shot["data"])
        finally:
            _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """End the browser and every process it started (its process group); SIGKILL what lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            proc.poll()  # reap the leader: a zombie still counts as a member of its group
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


async def _browser_call(root: Page, method: str, **params: Any) -> dict[str, Any]:
    i = next(root.ids)
    await root.ws.send_str(json.dumps({"id": i, "method": method, "params": params}))
    while True:
        msg = json.loads((await root.ws.receive()).data)
        if msg.get("id") == i:
            return dict(msg.get("result") or {})


if __name__ == "__main__":
    text, png = asyncio.run(look(sys.argv[1], lambda t: "connected" in t))
    with open(sys.argv[2], "wb") as out:
        out.write(png)
    print(text)
