"""Where locality-aware dispatch learns what a prompt is: the chained prefix hashes of its text
(controlplane/prefix_hash.py) while serving, Mooncake's hash_ids in replay; and the audit
re-deriving locality dispatches from their decision rows."""
from __future__ import annotations

import copy
import dataclasses
import json

import pytest

from controlplane.core.policy import DispatchPolicy
from controlplane.prefix_hash import BLOCK_TOKENS, prompt_text, request_prefix, text_hashes
from controlplane.requests import CompletionRequest
from replay.audit import audit_decisions
from replay.runner import default_policy, run_virtual
from replay.workload import WorkloadRequest

BLOCK = BLOCK_TOKENS * 4  # characters a block covers


def _text(seed: int, blocks: float) -> str:
    words = (f"w{seed}x{i} " for i in range(10**6))
    out = ""
    while len(out) < blocks * BLOCK:
        out += next(words)
    return out[:int(blocks * BLOCK)]


def test_a_shared_prefix_shares_exactly_its_leading_hashes() -> None:
    system = _text(1, 3)
    a, b = text_hashes(system + _text(2, 2)), text_hashes(system + _text(3, 2))
    assert len(a) == len(b) == 5
    assert a[:3] == b[:3] and all(x != y for x, y in zip(a[3:], b[3:]))
    assert text_hashes(system) == a[:3]


def test_a_blocks_hash_depends_on_every_block_before_it() -> None:
    same_block = _text(9, 1)
    a, b = text_hashes(_text(1, 1) + same_block), text_hashes(_text(2, 1) + same_block)
    assert a[1] != b[1]  # the same text after another prefix is another prefix


def test_the_last_block_may_be_partial_and_only_max_blocks_are_hashed() -> None:
    text = _text(4, 2.5)
    assert len(text_hashes(text)) == 3
    assert text_hashes(text)[:2] == text_hashes(text[:2 * BLOCK] + "other ending")[:2]
    assert text_hashes(text)[2] != text_hashes(text[:2 * BLOCK] + "other ending")[2]
    assert len(text_hashes(_text(5, 10), max_blocks=4)) == 4
    assert text_hashes("") == ()


def test_a_chat_prompt_is_its_messages_in_order() -> None:
    system = {"role": "system", "content": _text(6, 2)}

    def chat(question: str) -> CompletionRequest:
        body = {"messages": [system, {"role": "user", "content": question}]}
        return CompletionRequest("chat", "m", "", 100, 16, False, False, body=body)

    a, block = request_prefix(chat("what is a prefix?"))
    b, _ = request_prefix(chat("and a suffix?"))
    assert block == BLOCK_TOKENS and len(a) == len(b) == 3 and a[:2] == b[:2] and a[2] != b[2]
    assert '"role":"system"' in prompt_text(chat("x"))
    text = CompletionRequest("text", "m", _text(7, 1.5), 100, 16, False, False)
    assert request_prefix(text) == (text_hashes(text.prompt), BLOCK_TOKENS)


# -- replay and the audit ---------------------------------------------------------------------------------

def _workload() -> list[WorkloadRequest]:
    """Four conversations of 6-block prompts, each turn sharing the conversation's first 4 blocks."""
    out = []
    for k in range(48):
        conv = k % 4
        ids = [100 * conv + j for j in range(4)] + [10_000 + 2 * k, 10_001 + 2 * k]
        out.append(WorkloadRequest(k * 150.0, 3000, 40, tenant=f"t{conv % 2}", hash_ids=ids))
    return out


POLICY = dataclasses.replace(default_policy("fcfs"), dispatch=DispatchPolicy({"ttft": 1.0, "prefix": 1.0}, "prefix"))


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    run = run_virtual(_workload(), POLICY, engines=3, torch_expert=False, record_decisions=True)
    assert run.overall.completed == 48
    return run.decisions


def test_replay_dispatches_by_the_workloads_hash_ids_and_the_audit_re_derives_them(rows: list[dict]) -> None:
    dispatches = [json.loads(r["inputs"]) for r in rows if r["kind"] == "dispatch"]
    located = [x for x in dispatches if any(c > 0 for c in x.get("engine_cached", []))]
    assert len(located) >= 40  # every turn after a conversation's first finds its prefix somewhere
    assert all(x["weights"] == {"ttft": 1.0, "prefix": 1.0} for x in dispatches)
    assert all(set(s) == {"ttft", "prefix", "total"} for x in dispatches for s in x["scores"])
    # each conversation stays where its first turn went (rids are r00..r47, conversation = k % 4)
    engines: dict[int, set[str]] = {}
    for r in rows:
        if r["kind"] == "dispatch":
            engines.setdefault(int(r["rid"][1:]) % 4, set()).add(r["engine"])
    assert all(len(e) == 1 for e in engines.values()), engines
    rep = audit_decisions(rows, {1: POLICY})
    assert rep.ok, rep.format()
    assert rep.dispatch_rederived == len(dispatches) == 48


def test_the_audit_finds_a_tampered_cached_estimate_or_score(rows: list[dict]) -> None:
    i = next(k for k, r in enumerate(rows) if r["kind"] == "dispatch"
             and max(json.loads(r["inputs"]).get("engine_cached", [0])) > 0
             and len(json.loads(r["inputs"])["candidates"]) > 1)
    x = json.loads(rows[i]["inputs"])
    chosen = x["engine_cached"].index(max(x["engine_cached"]))
    tampered = copy.deepcopy(rows)
    x["engine_cached"] = [0.0] * len(x["engine_cached"])  # as if nothing were cached anywhere
    tampered[i]["inputs"] = json.dumps(x)
    rep = audit_decisions(tampered, {1: POLICY})
    assert {m.field for m in rep.mismatches} >= {"inputs.scores"} and all(m.index == i for m in rep.mismatches)
    assert x["candidates"][chosen] == rows[i]["engine"]
    tampered = copy.deepcopy(rows)
    y = json.loads(rows[i]["inputs"])
    y["scores"][0]["prefix"] += 1e-9
    tampered[i]["inputs"] = json.dumps(y)
    assert [m.field for m in audit_decisions(tampered, {1: POLICY}).mismatches] == ["inputs.scores"]


def test_the_audit_holds_the_weights_to_the_policy_version(rows: list[dict]) -> None:
    other = dataclasses.replace(POLICY, dispatch=DispatchPolicy({"ttft": 1.0}, "prefix"))
    rep = audit_decisions(rows, {1: other})
    assert {m.field for m in rep.mismatches} == {"inputs.weights"}
    tenant = dataclasses.replace(POLICY, dispatch=DispatchPolicy({"ttft": 1.0, "prefix": 1.0}, "tenant"))
    assert {m.field for m in audit_decisions(rows, {1: tenant}).mismatches} == {"inputs.engine_cached"}
