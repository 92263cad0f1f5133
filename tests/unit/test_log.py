"""Log lines journald understands: <N> priorities under journald, timestamps elsewhere."""
import logging
import os

from heimdall import log


def _emit(stream, level, message):
    log.setup(debug=True, stream=stream)
    logging.getLogger("heimdall.test").log(level, message)
    for h in logging.getLogger().handlers:
        h.flush()


def test_syslog_priorities():
    assert [log.syslog_priority(x) for x in (logging.DEBUG, logging.INFO, logging.WARNING,
                                             logging.ERROR, logging.CRITICAL)] == [7, 6, 4, 3, 2]


def test_under_journald_lines_have_priority_prefix_and_no_timestamp(tmp_path, monkeypatch):
    path = tmp_path / "journal"
    with open(path, "w") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        _emit(stream, logging.ERROR, "boom\nsecond line")
    assert path.read_text().splitlines() == ["<3>heimdall.test: boom", "<3>second line"]


def test_elsewhere_lines_have_a_timestamp_and_level(tmp_path, monkeypatch):
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    path = tmp_path / "console"
    with open(path, "w") as stream:
        _emit(stream, logging.WARNING, "careful")
    line = path.read_text().strip()
    assert line.endswith("WARNING heimdall.test: careful") and line[:4].isdigit()


def test_a_journal_stream_of_another_file_is_not_ours(tmp_path, monkeypatch):
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")  # inherited from a parent, not our stderr
    path = tmp_path / "console"
    with open(path, "w") as stream:
        _emit(stream, logging.INFO, "hello")
    assert not path.read_text().startswith("<")


def test_debug_switch_sets_the_level(tmp_path):
    with open(tmp_path / "x", "w") as stream:
        log.setup(debug=False, stream=stream)
        assert logging.getLogger().level == logging.INFO


def test_redis_server_lines_keep_their_level_and_lose_their_timestamp():
    from heimdall.redis_server import redis_log_line

    assert redis_log_line("4242:M 25 Nov 2026 01:03:28.831 * Ready to accept connections") == (
        logging.INFO, "Ready to accept connections")
    assert redis_log_line("7:C 5 Jan 2027 01:03:28.826 # WARNING Memory overcommit must be enabled!")[0] == (
        logging.WARNING)
    assert redis_log_line("7:S 25 Nov 2026 01:03:28.826 - Accepted 10.0.0.1:5") == (logging.DEBUG,
                                                                                   "Accepted 10.0.0.1:5")
    assert redis_log_line("an unexpected line") == (logging.INFO, "an unexpected line")
