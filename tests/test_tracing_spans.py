"""sluice's request spans through a real gateway on loopback: shape, attributes, events, traceparent."""
from __future__ import annotations

import http.client
import json

from sluice.server import create_app
from tests.fake_engine import FakeEngine
from tests.gateway_fixtures import KEYS, make_config
from tests.servers import ServerThread


def _post(server, max_tokens=4, stream=True):
    body = {"model": "sluice-default", "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens,
            "stream": stream}
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body).encode(),
                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEYS['acme']}"})
    resp = conn.getresponse()
    text = resp.read().decode()
    conn.close()
    assert resp.status == 200, text
    return text


def _flush(sluice):
    rec = sluice.recorder
    if rec.provider is not None:
        rec.provider.force_flush()
    assert rec.store.flush()
    return rec.store.cursor()


def _run(tmp_path, ratio):
    config = make_config(tmp_path, ["fake"])
    config.telemetry.trace_sample_ratio = ratio
    engine = FakeEngine()
    app, sluice = create_app(config, {"fake": engine})
    return engine, app, sluice


def test_one_request_one_trace(tmp_path):
    engine, app, sluice = _run(tmp_path, 1.0)
    with ServerThread(app) as server:
        text = _post(server)
        assert "data: [DONE]" in text
        cur = _flush(sluice)
        (rid, trace_id, status, completion), = cur.execute(
            "SELECT rid, trace_id, status, completion_tokens FROM requests").fetchall()
        assert status == "ok" and completion == 4 and trace_id and len(trace_id) == 32
        spans = {r[1]: r for r in cur.execute(
            "SELECT trace_id, kind, span_id, parent_span_id, name, attributes, start_ts, end_ts FROM spans "
            "WHERE service = 'sluice'").fetchall()}
        events = cur.execute("SELECT span_id, name, ts, attributes FROM span_events").fetchall()

    assert set(spans) == {"SERVER", "CLIENT"}
    root, child = spans["SERVER"], spans["CLIENT"]
    assert root[0] == child[0] == trace_id  # one trace, and the request row names it
    assert root[3] is None and child[3] == root[2]  # engine generate is the root's child
    assert root[4] == "chat sluice-default" and child[4] == "engine generate"
    assert root[6] <= child[6] <= child[7] <= root[7]

    rattrs, cattrs = json.loads(root[5]), json.loads(child[5])
    assert rattrs["sluice.rid"] == rid and rattrs["sluice.tenant"] == "acme"
    assert rattrs["sluice.engine"] == "fake" and rattrs["sluice.status"] == "ok"
    assert rattrs["gen_ai.operation.name"] == "chat" and rattrs["gen_ai.response.id"] == rid
    assert rattrs["gen_ai.response.finish_reasons"] == ["length"]
    assert rattrs["gen_ai.response.time_to_first_chunk"] > 0
    assert cattrs["sluice.engine"] == "fake" and cattrs["sluice.rid"] == rid
    assert cattrs["gen_ai.usage.output_tokens"] == 4 and cattrs["gen_ai.usage.input_tokens"] > 0

    by_span: dict[str, dict[str, tuple]] = {}
    for span_id, name, ts, attrs in events:
        by_span.setdefault(span_id, {})[name] = (ts, json.loads(attrs) if attrs else {})
    root_events, child_events = by_span[root[2]], by_span[child[2]]
    assert {"admission", "dispatch"} <= set(root_events)
    assert root_events["admission"][1]["sluice.decision"] == "admit"
    assert root_events["dispatch"][1]["sluice.engine"] == "fake"
    assert set(child_events) == {"first_token"}
    assert child[6] <= child_events["first_token"][0] <= child[7]
    assert root[6] <= root_events["dispatch"][0] <= child[6] + 1e-3

    # the engine was told the engine span, sampled
    (greq,) = engine.submitted
    assert greq.traceparent == f"00-{trace_id}-{child[2]}-01"


def test_unsampled_request_stores_its_row_but_no_spans(tmp_path):
    engine, app, sluice = _run(tmp_path, 0.0)
    with ServerThread(app) as server:
        _post(server)
        _post(server, stream=False)
        cur = _flush(sluice)
        rows = cur.execute("SELECT status, trace_id FROM requests").fetchall()
        n_spans = cur.execute("SELECT count(*) FROM spans").fetchone()[0]
        n_events = cur.execute("SELECT count(*) FROM span_events").fetchone()[0]
    assert [r[0] for r in rows] == ["ok", "ok"] and all(r[1] and len(r[1]) == 32 for r in rows)
    assert n_spans == 0 and n_events == 0
    # the engine still gets a traceparent (the root's, sampled flag clear) so its sampler agrees
    assert len(engine.submitted) == 2
    for greq in engine.submitted:
        assert greq.traceparent is not None and greq.traceparent.endswith("-00")
    assert {g.traceparent.split("-")[1] for g in engine.submitted} == {r[1] for r in rows}
