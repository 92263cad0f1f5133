"""A minimal Daemon used by the runtime tests: records its lifecycle in a marker file."""
import asyncio
import sys
import time

from heimdall.daemon import Daemon, run_program


def main() -> int:
    marker, *args = sys.argv[1:]
    opts = {"--start-delay": 0.0, "--stall-after": None}
    fail_start = "--fail-start" in args
    for name in opts:
        if name in args:
            opts[name] = float(args[args.index(name) + 1])

    class Sample(Daemon):
        program = "sample"

        async def start(self):
            try:
                await asyncio.sleep(opts["--start-delay"])
            finally:
                if fail_start:
                    raise ConnectionError("could not reach anything")
            open(marker, "w").write("started")

        def tasks(self):
            return [self.work()]

        async def work(self):
            """Progresses, until --stall-after seconds: then it is stuck for good (says STATUS=stalled once),
            while the event loop, and with it the watchdog pinger, runs on."""
            began = time.monotonic()
            while opts["--stall-after"] is None or time.monotonic() - began <= opts["--stall-after"]:
                self.progress()
                await asyncio.sleep(0.02)
            self.status("stalled")
            await asyncio.Event().wait()

        async def reload(self, config):
            open(marker, "w").write("reloaded")

        async def shutdown(self):
            open(marker, "w").write("stopped")

    return run_program("heimdall-wg", Sample, ["--config", marker + ".conf"])


if __name__ == "__main__":
    sys.exit(main())
