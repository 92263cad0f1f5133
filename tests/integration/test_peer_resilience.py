"""heimdall-peer keeps going when no node can be reached, whatever the way the dial fails."""
import time

import pytest

from heimdall.lab.cluster import LabPeer, wait_until

pytestmark = pytest.mark.integration

NOWHERE = ("tcp://192.0.2.200:9000", "tcp://192.0.2.201:9000")  # on the lab's segment, no host there


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "tls-skip-verify"])
def test_unreachable_nodes_are_tried_in_turn_and_the_peer_keeps_running(lab, tmp_path, tls):
    """With --skip-verify the dial itself fetches the server's certificate first, and that
    failure is not a gRPC error: it must move the peer on to the next node just the same."""
    settings = {"node-addr": f"[{', '.join(NOWHERE)}]", **({"skip-verify": "true"} if tls else {})}
    peer = LabPeer(lab.add_host("laptop"), "laptop", [], tmp_path, settings=settings).start()
    try:
        wait_until(lambda: all(f"node {address}: " in peer.log() for address in NOWHERE), 20,
                   "the peer to try both nodes")
        time.sleep(1)
        assert peer.proc.poll() is None, peer.logs()
        assert "Traceback" not in peer.log() and "fatal error" not in peer.log()
    finally:
        peer.stop()
