"""A short run of every benchmark, so a broken one is noticed: few samples, each must print its figures.

No figure's value is judged here (timing on a shared CI machine says little); `make bench` runs them in
full. Each benchmark's size comes from its HEIMDALL_BENCH_* environment variables.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SMALL = {"HEIMDALL_BENCH_CHANGES": "3", "HEIMDALL_BENCH_IDLE_SECONDS": "2", "HEIMDALL_BENCH_PEERS": "2",
         "HEIMDALL_BENCH_FAILOVER_ROUNDS": "1", "HEIMDALL_BENCH_DNS_SECONDS": "1"}
FIGURE = re.compile(r"(?P<name>[a-z0-9_-]+)=(?P<value>-?\d+(?:\.\d+)?(?:e[+-]?\d+)?) (?P<unit>\S.*)")
# Per-program figures for every process a node runs, the elector's sentinel and wireguard-go included.
PROGRAMS = ("store", "wg", "api", "elector", "dns", "redis-server", "redis-sentinel", "wireguard-go")
EXPECTED = {
    "cluster": {"join_s", "convergence_ms_p50", "convergence_ms_p99", "change_loss_packets", "host_pss_mb",
                "host_idle_cpu_pct", "rss_peak_mb_max", "pss_mb_max", "idle_cpu_pct_max",
                *(f"{figure}_{program}" for figure in ("rss_peak_mb", "pss_mb", "idle_cpu_pct")
                  for program in PROGRAMS)},
    "peers": {"peer_connect_s", "peer_connect_all_s", "peer_push_ms_p50", "peer_push_ms_p99", "revoke_ms",
              "revoke_entries_ms"},
    "failover": {"failover_s", "failover_s_max", "failover_lost_writes", "failover_peer_loss_packets"},
    "dns": {"dns_qps", "dnsmasq_qps", "dns_qps_ratio", "dns_p99_ms_at_5k_qps", "route_converge_ms_p99"},
}


@pytest.mark.parametrize("benchmark", EXPECTED)
def test_a_short_run_of_the_benchmark_prints_its_figures(benchmark):
    result = subprocess.run([sys.executable, "-m", "bench", benchmark], cwd=REPO, env={**os.environ, **SMALL},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr[-6000:]}"
    lines = result.stdout.splitlines()
    malformed = [line for line in lines if not FIGURE.fullmatch(line)]
    assert lines and not malformed, f"not `name=value unit` lines: {malformed}\n{result.stdout}"
    printed = {FIGURE.fullmatch(line)["name"] for line in lines}
    assert not EXPECTED[benchmark] - printed, f"missing {sorted(EXPECTED[benchmark] - printed)}\n{result.stdout}"
    print(result.stdout)
