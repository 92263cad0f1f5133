"""Diff planning between desired and actual WireGuard state, and local keys."""
import stat

import pytest

from heimdall.wg import keys
from heimdall.wg.model import PeerPlan, WgPeer, plan_peers, plan_set

K1, K2, K3 = (keys.public_key(keys.generate_private_key()) for _ in range(3))


def test_allowed_ips_are_normalized_and_sorted():
    assert WgPeer(K1, ("10.2.3.4/16", "10.1.0.0/16")).allowed_ips == ("10.1.0.0/16", "10.2.0.0/16")


def test_plan_adds_updates_and_removes_single_peers():
    actual = {K1: WgPeer(K1, ("10.1.0.0/16",)), K2: WgPeer(K2, ("10.2.0.0/16",))}
    desired = {K1: WgPeer(K1, ("10.1.0.0/16", "10.200.0.0/24")), K3: WgPeer(K3, ("10.3.0.0/16",))}
    plan = plan_peers(desired, actual)
    assert [p.public_key for p in plan.add] == [K3]
    assert [p.public_key for p in plan.update] == [K1]
    assert plan.remove == (K2,)
    assert plan.summary() == "+1 ~1 -1"


def test_identical_state_plans_nothing():
    state = {K1: WgPeer(K1, ("10.1.0.0/16",), "192.0.2.1:10100", 25)}
    assert not plan_peers(state, dict(state))
    assert plan_peers({}, {}) == PeerPlan()


def test_a_roamed_endpoint_is_not_fought_unless_we_want_a_specific_one():
    actual = {K1: WgPeer(K1, ("10.1.0.0/16",), endpoint="198.51.100.7:4444")}
    assert not plan_peers({K1: WgPeer(K1, ("10.1.0.0/16",))}, actual)
    plan = plan_peers({K1: WgPeer(K1, ("10.1.0.0/16",), endpoint="192.0.2.1:10100")}, actual)
    assert [p.public_key for p in plan.update] == [K1]


def test_keepalive_change_is_an_update():
    plan = plan_peers({K1: WgPeer(K1, persistent_keepalive=25)}, {K1: WgPeer(K1)})
    assert len(plan.update) == 1 and not plan.add and not plan.remove


def test_plan_set():
    plan = plan_set({"10.0.0.1/16", "10.0.0.2/16"}, {"10.0.0.2/16", "10.0.0.3/16"})
    assert (plan.add, plan.remove) == (("10.0.0.1/16",), ("10.0.0.3/16",))
    assert not plan_set({"a"}, {"a"})


def test_private_key_is_created_0600_and_reused(tmp_path):
    path = tmp_path / "state" / "wg.key"
    key = keys.load_or_create_private_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert keys.load_or_create_private_key(path) == key
    assert keys.public_key(key) != key


def test_a_key_readable_by_others_is_refused(tmp_path):
    path = tmp_path / "wg.key"
    keys.load_or_create_private_key(path)
    path.chmod(0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        keys.load_or_create_private_key(path)


@pytest.mark.parametrize("bad", ["", "not base64!", "AAAA", "A" * 43 + "=" + "A"])
def test_invalid_keys_are_rejected(bad):
    with pytest.raises(ValueError, match="not a WireGuard key"):
        keys.validate_key(bad)


def test_plan_remembers_what_each_updated_peer_holds_now():
    from heimdall.wg.model import WgPeer, plan_peers

    key = "A" * 43 + "="
    have = WgPeer(key, ("10.1.0.0/16",))
    plan = plan_peers({key: WgPeer(key, ("10.1.0.0/16", "10.2.0.0/16"))}, {key: have})
    assert plan.previous == {key: have} and len(plan.update) == 1
