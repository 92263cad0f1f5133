"""Run every benchmark; each prints `figure=value unit` lines on stdout (progress on stderr)."""
import sys

from bench import cluster


def main() -> int:
    for benchmark in (cluster,):
        benchmark.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
