"""A datagram socket standing in for systemd's NOTIFY_SOCKET: tests read what daemons send."""
import socket
import time
from pathlib import Path


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.path = path

    def messages_until(self, predicate, timeout=5.0) -> list[str]:
        seen, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                seen.append(self.sock.recv(4096).decode())
            except socket.timeout:
                break
            if predicate(seen):
                return seen
        raise AssertionError(f"condition not met; got {seen}")
