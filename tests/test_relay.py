"""A worker's relay (controlplane/gateway/relay.py) in front of an ASGI app on a Unix socket, as the
decision process serves its routes to the workers (`sluice serve --workers N`)."""
from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from controlplane.gateway.relay import Relay


async def _echo(request: Any) -> JSONResponse:
    return JSONResponse({"host": request.headers.get("host"), "url": str(request.url)})


async def _relay(tmp_path: Any, path: str, method: str = "GET") -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """One request through the relay to a Starlette app (redirect_slashes on) behind uvicorn."""
    sock = str(tmp_path / "http.sock")
    app = Starlette(routes=[Route("/admin/v1/state", _echo, methods=["GET", "POST"])])
    server = uvicorn.Server(uvicorn.Config(app, uds=sock, lifespan="off", log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    relay, sent = Relay(sock, 1 << 20), []
    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": [(b"host", b"gateway.example:8080"), (b"user-agent", b"test")]}
    messages = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    try:
        await relay(scope, receive, send)
    finally:
        await relay.close()
        server.should_exit = True
        await task
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], [(bytes(k).lower(), bytes(v)) for k, v in start["headers"]], body


def test_the_client_host_reaches_the_decision_process_and_its_redirects(tmp_path):
    status, headers, _ = asyncio.run(_relay(tmp_path, "/admin/v1/state/"))
    assert status == 307  # Starlette's slash redirect names where the client came in, not the relay's socket
    assert dict(headers)[b"location"] == b"http://gateway.example:8080/admin/v1/state"
    status, _, body = asyncio.run(_relay(tmp_path, "/admin/v1/state"))
    assert status == 200 and b'"host":"gateway.example:8080"' in body


def test_the_relayed_answer_leaves_date_and_server_to_the_worker(tmp_path):
    """The worker's uvicorn adds its own `date` and `server`: the decision process's are dropped, not doubled."""
    _, headers, _ = asyncio.run(_relay(tmp_path, "/admin/v1/state"))
    names = [k for k, _ in headers]
    assert b"date" not in names and b"server" not in names and b"content-type" in names
