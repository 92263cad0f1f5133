"""Loading the cluster key safely and deriving secrets from it."""
import pytest

from heimdall import cluster


def test_key_file_must_be_private(tmp_path):
    f = tmp_path / "cluster.key"
    f.write_text("correct horse battery staple\n")
    f.chmod(0o644)
    with pytest.raises(cluster.ClusterKeyError, match="chmod 600"):
        cluster.load_cluster_key("", f)
    f.chmod(0o600)
    assert cluster.load_cluster_key("", f) == b"correct horse battery staple"


def test_explicit_key_wins_and_short_or_missing_keys_are_refused(tmp_path):
    assert cluster.load_cluster_key("an explicit key value", None) == b"an explicit key value"
    with pytest.raises(cluster.ClusterKeyError, match="too short"):
        cluster.load_cluster_key("short", None)
    with pytest.raises(cluster.ClusterKeyError, match="no such file"):
        cluster.load_cluster_key("", tmp_path / "missing")
    with pytest.raises(cluster.ClusterKeyError, match="no cluster key"):
        cluster.load_cluster_key("", None)


def test_derived_secrets_differ_by_purpose_and_hide_the_key():
    key = b"0123456789abcdef0123"
    assert cluster.redis_password(key) == cluster.redis_password(key)
    assert cluster.redis_password(key) != cluster.derive(key, "join")
    assert key.decode() not in cluster.redis_password(key)
    assert cluster.redis_password(key) != cluster.redis_password(key + b"x")
