"""The OpenAI-compatible gateway over real HTTP on loopback: the official client, bad input, faults."""
from __future__ import annotations

import http.client
import json
import time

import openai
import pytest

from tests.fake_engine import FakeEngine
from tests.gateway_fixtures import KEYS, running_gateway


def raw(server, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    data = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else None)
    conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    out = resp.status, dict(resp.getheaders()), resp.read()
    conn.close()
    return out


def auth(tenant="acme"):
    return {"Authorization": f"Bearer {KEYS[tenant]}"}


def wait_until(pred, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


@pytest.fixture
def fake_gateway(tmp_path):
    engine = FakeEngine()
    with running_gateway(tmp_path, {"fake": engine}) as (server, sluice):
        yield server, sluice, engine


def test_openai_client_chat_and_completions(fake_gateway):
    server, sluice, engine = fake_gateway
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEYS["acme"], max_retries=0)
    chat = client.chat.completions.create(model="sluice-default", messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=5)
    assert chat.choices[0].message.content == "w1 w2 w3 w4 w5 "
    assert chat.choices[0].finish_reason == "length"
    assert chat.usage.completion_tokens == 5 and chat.usage.total_tokens == chat.usage.prompt_tokens + 5

    stream = client.chat.completions.create(model="sluice-default", messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=4, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "w1 w2 w3 w4 "
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 4 and chunks[-1].choices == []

    comp = client.completions.create(model="sluice-default", prompt="Once upon", max_tokens=3)
    assert comp.choices[0].text == "w1 w2 w3 " and comp.usage.completion_tokens == 3
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="sluice-default", prompt="x", max_tokens=2, stream=True) if c.choices)
    assert streamed == "w1 w2 "
    models = client.models.list()
    assert "sluice-default" in [m.id for m in models.data]
    assert sluice.pool.core.in_flight() == 0 and sluice.pool.core.queued() == 0


@pytest.mark.parametrize("body,headers,status,code", [
    (b"{not json", None, 400, "invalid_json"),
    (b"[1,2]", None, 400, "invalid_json"),
    ({"model": "sluice-default"}, None, 400, "missing_required_parameter"),
    ({"model": "sluice-default", "messages": "hi"}, None, 400, "missing_required_parameter"),
    ({"model": "sluice-default", "messages": [{"role": "wizard", "content": "x"}]}, None, 400, "invalid_value"),
    ({"model": "sluice-default", "messages": [{"role": "user", "content": 3}]}, None, 400, "invalid_type"),
    ({"model": "sluice-default", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}, None, 400,
     "invalid_value"),
    ({"model": "sluice-default", "messages": [{"role": "user", "content": "x"}], "max_tokens": 10**9}, None, 400,
     "invalid_value"),
    ({"model": "sluice-default", "messages": [{"role": "user", "content": "x"}], "max_tokens": "10"}, None, 400,
     "invalid_type"),
    ({"model": "sluice-default", "messages": [{"role": "user", "content": "x"}], "temperature": 9}, None, 400,
     "invalid_value"),
    ({"model": "sluice-default", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}, None, 400,
     "invalid_type"),
    ({"model": "gpt-nope", "messages": [{"role": "user", "content": "x"}]}, None, 404, "model_not_found"),
    ({"model": "sluice-default", "messages": [{"role": "user", "content": "x" * 100_000}]}, None, 413,
     "body_too_large"),
    ({"model": "sluice-default", "messages": [{"role": "user", "content": "x"}]}, {"Authorization": ""}, 401,
     "invalid_api_key"),
    ({"model": "sluice-default", "messages": [{"role": "user", "content": "x"}]},
     {"Authorization": "Bearer sk-wrong"}, 401, "invalid_api_key"),
    ({"model": "sluice-default", "messages": [{"role": "user", "content": "x"}]},
     {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
    # issue 9 item 5: 50,000 nested arrays (under the 64 KiB body limit) is a 400, not a plain-text 500
    pytest.param(b'{"model": "sluice-default", "messages": ' + b"[" * 50_000, None, 400, "invalid_json",
                 id="nested-50000"),
    pytest.param(b'{"model": "sluice-default", "messages": ' + b"[" * 30_000 + b"]" * 30_000 + b"}", None, 400,
                 "invalid_json", id="nested-30000-closed"),
    pytest.param(b'{"model": "sluice-default", "messages": ' + b"[" * 500 + b"]" * 500 + b"}", None, 400,
                 "invalid_type", id="nested-500"),
    ({"model": "sluice-default", "messages": [{"role": "user", "content": "x"}]},
     {"Authorization": "bearer sk-wrong"}, 401, "invalid_api_key"),
    ({"model": "sluice-default", "messages": [{"role": "user", "content": "x"}]},
     {"Authorization": "Basic c2stdGVzdC1hY21lOg=="}, 401, "invalid_api_key"),
    # issue 9 item 6: what the engine would not honour is refused by name, never accepted and dropped
    ({"model": "sluice-default", "messages": [{"role": "user", "content": "x"}], "n": 2}, None, 400,
     "unsupported_value"),
    ({"model": "sluice-default", "messages": [{"role": "user", "content": "x"}], "functions": [{"name": "f"}]}, None,
     400, "unsupported_parameter"),
    ({"model": "sluice-default", "messages": [{"role": "user", "content": "x"}], "tool_choice": "required"}, None,
     400, "invalid_value"),
    ({"model": "sluice-default", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 3}, None, 400,
     "invalid_value"),
    ({"model": "sluice-default", "messages": [{"role": "tool", "content": "x"}]}, None, 400,
     "missing_required_parameter"),
    ({"model": "sluice-default", "messages": [{"role": "user", "content": None}]}, None, 400,
     "missing_required_parameter"),
    # an unknown key (a typo, another server's extension) is named, never accepted and dropped
    ({"model": "sluice-default", "messages": [{"role": "user", "content": "x"}], "temprature": 0.2}, None, 400,
     "unknown_parameter"),
    ({"model": "sluice-default", "messages": [{"role": "user", "content": "x"}], "guided_json": {}}, None, 400,
     "unknown_parameter"),
])
def test_bad_input_gets_an_openai_error(fake_gateway, body, headers, status, code):
    server, sluice, _ = fake_gateway
    got, hdrs, data = raw(server, "POST", "/v1/chat/completions", body, {**auth(), **(headers or {})})
    assert got == status
    err = json.loads(data)["error"]
    assert err["code"] == code and err["message"] and err["type"]
    assert sluice.pool.core.in_flight() == 0 and sluice.pool.core.queued() == 0
    # issue 9 item 10: an authenticated refusal leaves one row with what the client received (its
    # rid in x-request-id); an unauthenticated one leaves none and is counted by reason
    refusals = sluice.recorder.metrics.refusals_total.labels(code, str(status))._value.get()
    assert refusals == 1
    if status == 401:
        assert "x-request-id" not in hdrs and list(sluice.stats.requests) == []
        return
    [row] = sluice.stats.requests
    assert (row["rid"], row["tenant"], row["http_status"], row["error_code"], row["status"]) == \
        (hdrs["x-request-id"], "acme", status, code, "rejected")


def _running_stream(server, max_tokens):
    """A streamed completion whose first event arrived (it runs at the engine): its connection."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("POST", "/v1/completions", body=json.dumps(
        {"model": "sluice-default", "prompt": "x", "max_tokens": max_tokens, "stream": True}),
        headers={"Content-Type": "application/json", **auth()})
    resp = conn.getresponse()
    assert resp.status == 200
    resp.fp.readline()
    return conn


def test_client_disconnect_mid_stream_aborts_the_engine_request(tmp_path):
    engine = FakeEngine(delay=0.05)
    with running_gateway(tmp_path, {"fake": engine}) as (server, sluice):
        conn = _running_stream(server, 200)
        conn.sock.close()
        conn.close()
        wait_until(lambda: engine.aborted)
        wait_until(lambda: sluice.pool.core.in_flight() == 0)
        rid = engine.aborted[0]
        assert rid == engine.submitted[0].rid
        wait_until(lambda: any(r["rid"] == rid for r in sluice.stats.requests))
        row = next(r for r in sluice.stats.requests if r["rid"] == rid)
        assert row["status"] == "aborted" and row["error"] == "client_disconnected"


def test_engine_dying_mid_stream_ends_the_stream_with_an_error_event(tmp_path):
    engine = FakeEngine(die_after=3)
    with running_gateway(tmp_path, {"fake": engine}) as (server, sluice):
        status, _, data = raw(server, "POST", "/v1/completions",
                              {"model": "sluice-default", "prompt": "x", "max_tokens": 50, "stream": True}, auth())
        assert status == 200
        events = [line[6:] for line in data.decode().splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        assert "error" in json.loads(events[-2]) and json.loads(events[-2])["error"]["code"] == "engine_error"
        assert sluice.pool.core.in_flight() == 0
        # the failed engine is out of rotation until its next successful load poll
        status, _, data = raw(server, "POST", "/v1/completions",
                              {"model": "sluice-default", "prompt": "x", "max_tokens": 50}, auth())
        assert status == 503 and json.loads(data)["error"]["code"] == "no_healthy_engine"
        wait_until(lambda: sluice.pool.core.engines["fake"].healthy)
        status, _, data = raw(server, "POST", "/v1/completions",
                              {"model": "sluice-default", "prompt": "x", "max_tokens": 50}, auth())
        assert status == 502 and json.loads(data)["error"]["code"] == "engine_error"


def test_no_healthy_engine_is_503_with_retry_after(tmp_path):
    engine = FakeEngine(healthy=False)
    with running_gateway(tmp_path, {"fake": engine}) as (server, sluice):
        wait_until(lambda: not sluice.pool.core.engines["fake"].healthy)
        status, headers, data = raw(server, "POST", "/v1/completions",
                                    {"model": "sluice-default", "prompt": "x", "max_tokens": 5}, auth())
        assert status == 503 and int(headers["retry-after"]) >= 1
        assert json.loads(data)["error"]["code"] == "no_healthy_engine"


def test_concurrent_tenants_all_complete(tmp_path):
    import concurrent.futures

    engine = FakeEngine(delay=0.002)
    with running_gateway(tmp_path, {"fake": engine}, window=2) as (server, sluice):
        def one(i):
            tenant = "acme" if i % 2 else "globex"
            client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEYS[tenant], max_retries=0)
            r = client.completions.create(model="sluice-default", prompt="p", max_tokens=5)
            return r.usage.completion_tokens

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            assert list(pool.map(one, range(24))) == [5] * 24
        assert max(len(set(r.rid for r in engine.submitted)), 0) == 24
        wait_until(lambda: len(sluice.stats.requests) == 24)
        assert {r["tenant"] for r in sluice.stats.requests} == {"acme", "globex"}
        assert sluice.pool.core.in_flight() == 0 and sluice.pool.core.queued() == 0


def test_openai_surface_a_real_client_expects(fake_gateway):
    """Issue 9 item 8: models.retrieve, `"stream": null` read as false, a lowercase `bearer` scheme."""
    server, sluice, _ = fake_gateway
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEYS["acme"], max_retries=0)
    model = client.models.retrieve("sluice-default")
    assert (model.id, model.object, model.owned_by) == ("sluice-default", "model", "sluice")
    assert client.models.retrieve("meta-llama/Llama-3.1-8B-Instruct").id == "meta-llama/Llama-3.1-8B-Instruct"
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("gpt-nope")
    assert err.value.body["code"] == "model_not_found"
    status, _, data = raw(server, "GET", "/v1/models/sluice-default", headers={"Authorization": "Bearer nope"})
    assert status == 401 and json.loads(data)["error"]["code"] == "invalid_api_key"

    body = {"model": "sluice-default", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2,
            "stream": None, "stream_options": None}
    status, headers, data = raw(server, "POST", "/v1/chat/completions", body, auth())
    assert status == 200 and headers["content-type"].startswith("application/json")
    assert json.loads(data)["choices"][0]["message"]["content"] == "w1 w2 "

    for scheme in ("bearer", "BEARER", "Bearer"):
        lower = {"Authorization": f"{scheme} {KEYS['acme']}"}
        status, _, data = raw(server, "POST", "/v1/completions",
                              {"model": "sluice-default", "prompt": "x", "max_tokens": 1}, lower)
        assert status == 200, data
        assert raw(server, "GET", "/v1/models", headers=lower)[0] == 200
    assert sluice.pool.core.in_flight() == 0 and sluice.pool.core.queued() == 0


def test_the_openai_user_field_is_recorded_and_unknown_keys_are_named(fake_gateway):
    server, sluice, _ = fake_gateway
    status, _, data = raw(server, "POST", "/v1/chat/completions",
                          {"model": "sluice-default", "messages": [{"role": "user", "content": "x"}], "max_tokens": 3,
                           "user": "end-user-42"}, auth())
    assert status == 200
    wait_until(lambda: len(sluice.stats.requests) == 1)
    assert sluice.stats.requests[0]["end_user"] == "end-user-42"
    status, _, data = raw(server, "POST", "/v1/completions",
                          {"model": "sluice-default", "prompt": "x", "max_token": 3}, auth())
    err = json.loads(data)["error"]
    assert status == 400 and err["param"] == "max_token" and "max_token" in err["message"]


def test_a_stream_cut_by_the_server_stopping_is_rowed_as_a_shutdown_abort(tmp_path):
    """uvicorn cancels a stream still running past its graceful shutdown: the row says so
    (`aborted` / `server_shutdown`, as a gateway worker's does), not an internal error."""
    engine = FakeEngine(delay=0.05)
    with running_gateway(tmp_path, {"fake": engine}) as (server, sluice):
        conn = _running_stream(server, 1000)
        server.server.should_exit = True  # graceful for 2 s, then the stream's task is cancelled
        server.thread.join(timeout=20)
        conn.close()
    rid = engine.submitted[0].rid
    row = next(r for r in sluice.stats.requests if r["rid"] == rid)
    assert (row["status"], row["error"], row["http_status"]) == ("aborted", "server_shutdown", 200)
