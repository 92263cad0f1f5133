"""Run every benchmark (or those named: `python -m bench peers`); each prints `figure=value unit` lines on
stdout (progress on stderr)."""
import sys

from bench import cluster, dns, failover, peers

BENCHMARKS = {"cluster": cluster, "peers": peers, "failover": failover, "dns": dns}


def main(argv: list[str]) -> int:
    unknown = [name for name in argv if name not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    for name in argv or BENCHMARKS:
        BENCHMARKS[name].run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
