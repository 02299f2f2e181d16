"""The OpenAI surface a real client expects (issue 9, items 6 and 7), driven by the real `openai` SDK.

The main stack is the real one: the openai client -> sluice -> the SGLang HTTP adapter -> SGLang's
OpenAI-compatible endpoints (`sluice sim-server`'s app) -> the simulated engine, which honours
response_format, tools, stop, logprobs and echo (engine_adapter/sim/surface.py). A recording engine
shows what reached the engine: the client's messages (the engine applies the model's template),
sluice's rid and priority, the trace context.
"""
from __future__ import annotations

import dataclasses
import json

import openai
import pytest

from engine_adapter.base import GenerateRequest
from engine_adapter.sglang_http import SGLangHTTPEngine
from engine_adapter.sglang_server import make_sglang_app
from engine_adapter.sim.engine import SimEngine
from engine_adapter.sim.profile import load_profile
from engine_adapter.sim.surface import minimal_instance
from tests.gateway_fixtures import KEYS, running_gateway
from tests.servers import ServerThread
from tests.test_gateway import wait_until

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
CONTEXT = 4096
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "the weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "minLength": 1},
                                                    "days": {"type": "integer", "minimum": 1}},
                   "required": ["city", "days"]}}}
PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0},
                                           "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1}},
          "required": ["name", "age", "tags"], "additionalProperties": False}


class RecordingSim(SimEngine):
    """The simulator, keeping every request it was handed; `prompt_scale` makes its tokenizer count
    that many times the gateway's estimate (a model whose tokens are shorter than 4 characters)."""

    def __init__(self, *args, prompt_scale: float = 1.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[GenerateRequest] = []
        self.prompt_scale = prompt_scale

    def _prompt_tokens(self, request: GenerateRequest) -> int:
        return round(super()._prompt_tokens(request) * self.prompt_scale)

    def submit(self, request: GenerateRequest):
        self.seen.append(request)
        return super().submit(request)


def small_profile():
    return dataclasses.replace(load_profile("zero-delay"), context_length=CONTEXT)


@pytest.fixture
def stack(tmp_path):
    """sluice -> SGLangHTTPEngine -> the SGLang-compatible server -> RecordingSim."""
    sim = RecordingSim("sim", small_profile())
    with ServerThread(make_sglang_app(sim, model_name=MODEL)) as engine_server, \
            running_gateway(tmp_path, {"gpu0": SGLangHTTPEngine("gpu0", engine_server.url)}) as (gateway, sluice):
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEYS["acme"], max_retries=0)
        yield client, sluice, sim


def chat(client, **kw):
    kw.setdefault("messages", [{"role": "user", "content": "hello"}])
    kw.setdefault("max_tokens", 64)
    return client.chat.completions.create(model="sluice-default", **kw)


def test_chat_reaches_the_engine_as_messages_with_rid_priority_and_trace(stack):
    client, sluice, sim = stack
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    r = chat(client, messages=messages)
    seen = sim.seen[-1].openai
    assert seen["messages"] == messages  # no template of sluice's: the engine renders the messages
    assert seen["max_tokens"] == 64
    assert r.id == f"chatcmpl-{sim.seen[-1].rid}"  # sluice's rid is the engine's
    assert sim.seen[-1].traceparent  # the trace context travels in the header


def test_json_schema_response_is_valid_json(stack):
    client, _, _ = stack
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    r = chat(client, response_format=fmt)
    value = json.loads(r.choices[0].message.content)
    assert set(value) == {"name", "age", "tags"} and isinstance(value["age"], int) and len(value["tags"]) >= 1
    streamed = "".join(c.choices[0].delta.content or "" for c in chat(client, response_format=fmt, stream=True)
                       if c.choices)
    assert json.loads(streamed) == value
    obj = chat(client, response_format={"type": "json_object"})
    assert isinstance(json.loads(obj.choices[0].message.content), dict)


def test_required_tool_call_and_the_agent_loop(stack):
    client, _, _ = stack
    r = chat(client, tools=[WEATHER], tool_choice="required")
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    args = json.loads(call.function.arguments)
    assert call.function.name == "get_weather" and isinstance(args["city"], str) and args["days"] >= 1
    # streamed: the SDK's deltas assemble into the same call
    parts = [c for c in chat(client, tools=[WEATHER], tool_choice={"type": "function", "function":
                                                                   {"name": "get_weather"}}, stream=True) if c.choices]
    deltas = [tc for c in parts for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].function.name == "get_weather" and deltas[0].id
    assert json.loads("".join(d.function.arguments or "" for d in deltas)) == args
    assert parts[-1].choices[0].finish_reason == "tool_calls"
    # the next turn of an agent loop: an assistant message with content null and tool_calls
    follow = chat(client, tools=[WEATHER], messages=[
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.id, "type": "function", "function": {"name": "get_weather", "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"}])
    assert follow.choices[0].message.content and follow.choices[0].finish_reason in ("stop", "length")


def test_logprobs_have_the_right_shape(stack):
    client, _, _ = stack
    r = chat(client, logprobs=True, top_logprobs=2, max_tokens=5)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)
    assert "".join(t.token for t in content) == r.choices[0].message.content
    t = client.completions.create(model="sluice-default", prompt="hi", max_tokens=4, logprobs=1)
    lp = t.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == t.usage.completion_tokens and "".join(lp.tokens) == t.choices[0].text


def test_stop_echo_and_image_parts(stack):
    client, _, _ = stack
    r = chat(client, stop=["sluice"], max_tokens=64)  # the simulated text is "synthetic simulated tokens from the sluice ..."
    assert r.choices[0].finish_reason == "stop" and "sluice" not in r.choices[0].message.content
    assert r.choices[0].message.content.startswith("synthetic")
    t = client.completions.create(model="sluice-default", prompt="Once upon", max_tokens=3, echo=True)
    assert t.choices[0].text.startswith("Once upon")
    image = [{"type": "text", "text": "what is this?"},
             {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]
    assert chat(client, messages=[{"role": "user", "content": image}]).choices[0].message.content


@pytest.mark.parametrize("kw,param", [
    ({"n": 2}, "n"), ({"extra_body": {"best_of": 3}}, "best_of"), ({"extra_body": {"functions": [WEATHER["function"]]}}, "functions"),
    ({"tool_choice": "required"}, "tool_choice"), ({"top_logprobs": 2}, "top_logprobs"),
    ({"logit_bias": {"x": 1}}, "logit_bias"), ({"response_format": {"type": "xml"}}, "response_format"),
])
def test_unsupported_or_invalid_parameters_are_refused_by_name(stack, kw, param):
    client, _, sim = stack
    before = len(sim.seen)
    with pytest.raises(openai.BadRequestError) as info:
        chat(client, **kw)
    assert info.value.status_code == 400 and info.value.body["param"] == param
    assert len(sim.seen) == before  # never reached the engine


def test_suffix_is_refused_and_seed_logit_bias_are_forwarded(stack):
    client, _, sim = stack
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="sluice-default", prompt="def f(", suffix="return 1", max_tokens=4)
    assert info.value.body["param"] == "suffix"
    chat(client, seed=7, logit_bias={"1234": -100}, temperature=0.5)
    seen = sim.seen[-1].openai
    assert seen["seed"] == 7 and seen["logit_bias"] == {"1234": -100} and seen["temperature"] == 0.5


def test_context_length_exceeded_is_a_400_never_a_retry(stack):
    client, sluice, sim = stack
    assert sluice.pool.infos["gpu0"].context_length == CONTEXT  # read from the engine (/v1/models max_model_len)
    long = "word " * (CONTEXT * 2)  # 10,240 tokens at 4 characters a token
    with pytest.raises(openai.BadRequestError) as info:
        chat(client, messages=[{"role": "user", "content": long}], max_tokens=16)
    err = info.value
    assert err.status_code == 400 and err.body["code"] == "context_length_exceeded" and err.body["param"] == "messages"
    assert "retry-after" not in err.response.headers
    assert f"maximum context length is {CONTEXT} tokens" in err.body["message"]
    # prompt + max_tokens over the window is refused too (as SGLang and OpenAI do) ...
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="sluice-default", prompt=long, max_tokens=CONTEXT)
    assert info.value.body["code"] == "context_length_exceeded" and info.value.body["param"] == "prompt"
    # ... but a default max_tokens shrinks to the room left
    before = len(sim.seen)
    fits = "x" * ((CONTEXT - 100) * 4)  # 3,996 tokens: under the window, with less than 256 left
    r = client.completions.create(model="sluice-default", prompt=fits)
    assert r.usage.prompt_tokens + r.usage.completion_tokens < CONTEXT and len(sim.seen) == before + 1


def test_prompt_estimate_is_corrected_from_the_engine_and_its_error_exported(tmp_path):
    sim = RecordingSim("gpu0", small_profile(), prompt_scale=2.0)  # the engine counts 2x the estimate
    with running_gateway(tmp_path, {"gpu0": sim}) as (gateway, sluice):
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEYS["acme"], max_retries=0)
        for _ in range(3):
            client.completions.create(model="sluice-default", prompt="x" * 400, max_tokens=4)
        wait_until(lambda: sluice.errors.stats("prompt_tokens").count >= 3)
        assert sluice.prompt_estimator.ratio["sluice-default"] == pytest.approx(2.0, rel=0.02)
        assert sluice.prompt_estimator.correct("sluice-default", 100) == 200
        # the corrected estimate now admits (and refuses) as the engine counts
        with pytest.raises(openai.BadRequestError) as info:
            client.completions.create(model="sluice-default", prompt="x" * (CONTEXT * 3), max_tokens=4)
        assert info.value.body["code"] == "context_length_exceeded"


def test_in_process_simulator_honours_the_same_surface(tmp_path):
    with running_gateway(tmp_path, {"gpu0": SimEngine("gpu0", small_profile())}) as (gateway, _):
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEYS["acme"], max_retries=0)
        r = chat(client, response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}})
        assert json.loads(r.choices[0].message.content) == minimal_instance(PERSON)
        assert chat(client, tools=[WEATHER], tool_choice="required").choices[0].message.tool_calls


def test_minimal_instance_of_common_schemas():
    assert minimal_instance({"type": "string", "enum": ["b", "c"]}) == "b"
    assert minimal_instance({"anyOf": [{"type": "null"}, {"type": "integer"}]}) is None
    assert minimal_instance({"type": "number", "minimum": 2.5}) == 2.5
    assert minimal_instance({"type": ["null", "boolean"]}) is False


def test_an_engine_refusing_a_request_stays_healthy(tmp_path):
    sim = RecordingSim("gpu0", small_profile(), prompt_scale=3.0)  # counts 3x what sluice estimates
    with running_gateway(tmp_path, {"gpu0": sim}) as (gateway, sluice):
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEYS["acme"], max_retries=0)
        with pytest.raises(openai.BadRequestError):  # fits sluice's first estimate, not the engine's window
            client.completions.create(model="sluice-default", prompt="x" * 8000, max_tokens=16)
        assert sluice.pool.core.engines["gpu0"].healthy  # a 400 is the request's fault, not the engine's
        assert client.completions.create(model="sluice-default", prompt="hi", max_tokens=2).choices[0].text


async def test_native_sampling_params_are_honoured_or_refused_by_the_simulator():
    from engine_adapter.base import EngineError

    async def run(sp):
        sim = SimEngine("s", small_profile())
        try:
            return [c async for c in sim.submit(GenerateRequest(rid="n" * 32, prompt="hi", sampling_params=sp))]
        finally:
            await sim.close()

    out = await run({"max_new_tokens": 64, "json_schema": json.dumps(PERSON)})
    assert json.loads("".join(c.text for c in out)) == minimal_instance(PERSON)
    out = await run({"max_new_tokens": 64, "stop": ["sluice"]})
    assert "".join(c.text for c in out) == "synthetic simulated tokens from the " and out[-1].finish_reason == "stop"
    with pytest.raises(EngineError) as info:
        await run({"max_new_tokens": 4, "regex": "[a-z]+"})
    assert info.value.status_code == 400 and "regex" in str(info.value)
