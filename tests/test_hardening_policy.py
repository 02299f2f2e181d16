"""Issue 9 item 1: the policy in force survives restarts, versions are monotonic forever, the
history reads across restarts, and a config file that disagrees with the persisted policy at
start-up is resolved by the documented rule, in an audit row of its own."""
from __future__ import annotations

import contextlib
import json
from dataclasses import replace

from controlplane.core.policy import Policy, TenantPolicy
from controlplane.policy_store import merge_diff, reconcile
from sluice.server import create_app
from telemetry.store import Store
from tests.fake_engine import FakeEngine
from tests.gateway_fixtures import ADMIN, KEYS, make_config
from tests.servers import ServerThread
from tests.test_gateway import raw, wait_until

ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN}"}


@contextlib.contextmanager
def serving(config):
    app, sluice = create_app(config, {"fake": FakeEngine(delay=0.001)})
    with ServerThread(app) as server:
        yield server, sluice


def patch(server, changes, reason="r", actor="alice"):
    status, _, data = raw(server, "PATCH", "/admin/v1/policy", {"reason": reason, "changes": changes},
                          {**ADMIN_AUTH, "X-Sluice-Actor": actor})
    assert status == 200, data
    return json.loads(data)


def history(server):
    status, _, data = raw(server, "GET", "/admin/v1/policy/history", headers=ADMIN_AUTH)
    assert status == 200
    return json.loads(data)["changes"]


def audit_rows(db_path):
    with Store(db_path, autostart=False) as store:
        return store.cursor().execute(
            "SELECT version, actor, reason FROM policy_changes ORDER BY version").fetchall()


def test_policy_changes_survive_restarts_and_versions_never_repeat(tmp_path):
    config = make_config(tmp_path, ["fake"])
    with serving(config) as (server, sluice):
        assert patch(server, {"tenants": {"acme": {"weight": 3.0}}})["version"] == 2
        assert patch(server, {"scheduler": "vtc"}, reason="fairer")["version"] == 3

    with serving(config) as (server, sluice):
        policy = sluice.policy
        assert (policy.version, policy.scheduler, policy.tenant("acme").weight) == (3, "vtc", 3.0)
        assert sluice.pool.core.scheduler.name == "vtc"
        state = json.loads(raw(server, "GET", "/admin/v1/state", headers=ADMIN_AUTH)[2])
        assert state["policy_version"] == 3
        # the history reads across the restart
        # (v1, the config file's policy at the first start, is audited too)
        assert [(c["version"], c["reason"]) for c in history(server)] == \
            [(3, "fairer"), (2, "r"), (1, "start-up: policy v1 from the config file (the audit log held no policy)")]
        # decisions made now name the restored version
        status, _, _ = raw(server, "POST", "/v1/completions", {"model": "sluice-default", "prompt": "x",
                                                               "max_tokens": 2},
                           {"Authorization": f"Bearer {KEYS['acme']}"})
        assert status == 200
        wait_until(lambda: sluice.stats.requests)
        assert sluice.stats.requests[-1]["policy_version"] == 3
        # the next change is numbered after everything recorded
        assert patch(server, {"tenants": {"globex": {"weight": 2.0}}})["version"] == 4

    with serving(config) as (server, sluice):
        assert sluice.policy.version == 4 and sluice.policy.tenant("globex").weight == 2.0
    rows = audit_rows(config.server.db_path)
    assert [v for v, _, _ in rows] == [1, 2, 3, 4]  # one row per version, none repeated; v1: the first start


def test_an_edited_config_file_is_applied_over_the_persisted_policy_in_an_audited_change(tmp_path):
    config = make_config(tmp_path, ["fake"])
    with serving(config) as (server, _):
        patch(server, {"tenants": {"acme": {"weight": 5.0}}}, reason="acme's launch")  # v2, live

    # the operator edits the file: globex's weight and the scheduler; acme's line is untouched
    config = make_config(tmp_path, ["fake"], scheduler="wrr")
    config.policy = replace(config.policy, tenants={**config.policy.tenants, "globex": TenantPolicy(3.0)})
    with serving(config) as (server, sluice):
        policy = sluice.policy
        assert policy.version == 3
        assert (policy.scheduler, policy.tenant("acme").weight, policy.tenant("globex").weight) == ("wrr", 5.0, 3.0)
        change = history(server)[0]
        assert change["version"] == 3 and change["actor"] == "config"
        assert "scheduler" in change["reason"] and "tenants.globex.weight" in change["reason"]
        assert "acme" not in change["reason"]
        assert change["before"]["tenants"]["acme"]["weight"] == 5.0 and change["before"]["scheduler"] == "fcfs"
        assert change["after"]["scheduler"] == "wrr"

    # the same file again: nothing to reconcile, no new row
    with serving(config) as (server, sluice):
        assert sluice.policy.version == 3
    assert [(v, a) for v, a, _ in audit_rows(config.server.db_path)] == [(1, "config"), (2, "alice"), (3, "config")]

    # a tenant removed from the file leaves the policy (audited)
    config.tenants = [t for t in config.tenants if t.name != "globex"]
    config.policy = replace(config.policy, tenants={"acme": config.policy.tenants["acme"]})
    with serving(config) as (server, sluice):
        assert sluice.policy.version == 4 and "globex" not in sluice.policy.tenants
        assert sluice.policy.tenant("acme").weight == 5.0
        assert "tenants.globex" in history(server)[0]["reason"]


def test_reconcile_rule():
    config = make_config_for_unit()
    cfg = config.policy
    # nothing persisted: the config file's policy, version 1, audited as the first start's row
    r = reconcile(cfg, None)
    assert r.policy == cfg and r.record is not None
    assert (r.record["version"], r.record["before"], r.record["after"]) == (1, None, cfg.to_dict())
    # persisted and unchanged config: the persisted policy, no row
    live = replace(cfg, version=7, tenants={**cfg.tenants, "acme": TenantPolicy(weight=9.0)})
    row = {"version": 7, "after": live.to_dict(), "config": cfg.to_dict()}
    r = reconcile(cfg, row)
    assert r.policy == live and r.record is None and r.differs_from_config
    assert "tenants.acme.weight" in r.message
    # a baseline recorded before a field existed: the field's default is no edit of the file
    old_base = cfg.to_dict()
    old_base["tenants"]["acme"].pop("rate_limit_tpm")
    r = reconcile(cfg, {**row, "config": old_base})
    assert r.policy == live and r.record is None
    # a row from an older sluice (no config baseline): the persisted policy is kept, said so
    r = reconcile(cfg, {**row, "config": None})
    assert r.policy == live and r.record is None and "does not say" in r.message
    # a persisted policy this sluice cannot read: the config file's applies whole, as version 8, audited
    r = reconcile(cfg, {"version": 7, "after": {"scheduler": "lottery"}, "config": cfg.to_dict()})
    assert r.policy == replace(cfg, version=8) and r.record["version"] == 8 and r.record["actor"] == "config"
    # an edit that no longer merges (the class was deleted live): the file's policy applies whole
    no_batch = replace(live, slo_classes={"interactive": cfg.slo_classes["interactive"]},
                       tenants={"acme": TenantPolicy(weight=9.0)})
    edited = replace(cfg, tenants={**cfg.tenants, "acme": TenantPolicy(weight=2.0, slo_class="batch")})
    r = reconcile(edited, {"version": 7, "after": no_batch.to_dict(), "config": cfg.to_dict()})
    assert r.policy == replace(edited, version=8) and "applies whole" in r.record["reason"]


def test_merge_diff_is_the_patch_that_turns_base_into_new():
    base = {"a": 1, "b": {"x": 1.0, "y": True}, "gone": {"k": 1}}
    new = {"a": 1, "b": {"x": 1, "y": 1}, "added": 2}
    assert merge_diff(base, new) == {"b": {"y": 1}, "added": 2, "gone": None}


def make_config_for_unit():
    from controlplane.config import Config

    return Config(policy=Policy(tenants={"acme": TenantPolicy(2.0), "globex": TenantPolicy(1.0, "batch")}))


def test_a_store_file_from_an_older_sluice_gains_the_config_column(tmp_path):
    import duckdb

    path = str(tmp_path / "old.duckdb")
    con = duckdb.connect(path)
    con.execute("CREATE TABLE policy_changes (version BIGINT, ts DOUBLE, actor VARCHAR, reason VARCHAR, "
                "before VARCHAR, after VARCHAR)")
    con.execute("INSERT INTO policy_changes VALUES (2, 1.0, 'alice', 'old', NULL, '{}')")
    con.close()
    with Store(path) as store:
        store.record_policy_change_now({"version": 3, "actor": "bob", "reason": "new", "config": {"a": 1}})
        rows = store.cursor().execute("SELECT version, actor, config FROM policy_changes ORDER BY version").fetchall()
    assert rows == [(2, "alice", None), (3, "bob", '{"a":1}')]
