"""Which process is our redis-server: only one run from our config file may ever be signalled."""
from pathlib import Path

from heimdall.redis_server import RedisServerConfig, RedisServerProcess, runs_from

CONF = Path("/var/lib/heimdall/redis/redis.conf")


def cmdline(*argv: str) -> bytes:
    """As /proc/PID/cmdline holds it: each argument ends with a NUL."""
    return b"".join(a.encode() + b"\0" for a in argv)


def test_a_redis_server_run_from_our_config_is_ours():
    assert runs_from(cmdline("/usr/bin/redis-server", str(CONF), "--set-proc-title", "no"), CONF)
    assert runs_from(cmdline("redis-server", str(CONF)), CONF)
    assert runs_from(cmdline("/usr/bin/redis-server", "/x/sentinel.conf", "--sentinel"), Path("/x/sentinel.conf"))


def test_anything_else_is_not():
    assert not runs_from(cmdline("/usr/bin/redis-server", "/var/lib/other/redis.conf"), CONF)
    assert not runs_from(cmdline("/usr/bin/redis-server", str(CONF) + ".bak"), CONF)  # a prefix is not a match
    assert not runs_from(cmdline("/usr/bin/redis-server", "/var/lib/heimdall/redis"), CONF)
    assert not runs_from(cmdline("/usr/bin/cat", str(CONF)), CONF)  # our config, another program
    assert not runs_from(cmdline("/usr/bin/redis-server-wrapper", str(CONF)), CONF)
    assert not runs_from(cmdline("redis-server 127.0.0.1:16379"), CONF)  # retitled: says nothing of its config
    assert not runs_from(b"", CONF)  # a zombie, or a process gone


def test_the_pidfile_is_named_after_the_config():
    config = RedisServerConfig(port=16379, data_dir=Path("/var/lib/heimdall/redis"), password="p")
    assert RedisServerProcess(config).pidfile == Path("/var/lib/heimdall/redis/redis.pid")
