"""The runtime every Heimdall daemon shares.

``run_program()`` is the whole of a console script's ``main()``: parse the
settings table, configure logging once, run the daemon's asyncio loop.

A ``Daemon`` subclass implements ``start()`` (connect, first full reconcile:
when it returns the daemon is serving, so READY=1 is sent), ``tasks()`` (the
long-running coroutines), and optionally ``reload()`` and ``shutdown()``.
Signal handlers only set flags; the loop acts on them. The systemd watchdog is
fed only when the main work loop has called ``progress()`` since the last ping,
so a stuck loop gets the unit restarted.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from typing import Awaitable, Callable, TypeVar

import sdnotify

from heimdall import log, settings

logger = logging.getLogger("heimdall.daemon")
T = TypeVar("T")


class Notifier:
    """sd_notify messages; silent no-ops when not run by systemd."""

    def __init__(self) -> None:
        self._sd = sdnotify.SystemdNotifier()
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))

    def _send(self, message: str) -> None:
        if self.enabled:
            self._sd.notify(message)

    def ready(self, status: str) -> None:
        self._send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        self._send(f"STATUS={status}")

    def reloading(self) -> None:
        self._send("RELOADING=1")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")


def watchdog_interval() -> float | None:
    """Half of WATCHDOG_USEC in seconds, if systemd asked this process for pings."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None


class Daemon:
    """Base class of the suite's daemons."""

    program = "heimdall"

    def __init__(self, config: settings.Config, config_loader: Callable[[], settings.Config] | None = None) -> None:
        self.config = config
        self.config_loader = config_loader
        self.notifier = Notifier()
        self.stop_requested = asyncio.Event()
        self.reload_requested = asyncio.Event()
        self._last_progress = time.monotonic()
        self._progress_since_ping = True
        self.log = logging.getLogger(self.program)

    # -- to be implemented by daemons -------------------------------------------
    async def start(self) -> None:
        """Connect and do the first full reconcile. Return once actually serving."""

    def tasks(self) -> list[Awaitable[None]]:
        """Long-running coroutines; the main work loop must call progress()."""
        return []

    async def reload(self, config: settings.Config) -> None:
        """Apply a reloaded configuration (SIGHUP)."""
        self.config = config

    async def shutdown(self) -> None:
        """Release what start() acquired. Called once, also after a failed start."""

    # -- runtime ---------------------------------------------------------------------
    def progress(self) -> None:
        """Called by the main work loop on every iteration (feeds the watchdog)."""
        self._last_progress = time.monotonic()
        self._progress_since_ping = True

    def status(self, text: str) -> None:
        self.log.debug("status: %s", text)
        self.notifier.status(text)

    def request_stop(self) -> None:
        self.stop_requested.set()

    @staticmethod
    async def until(waiting: Awaitable[T], watched: asyncio.Future) -> T:
        """Await ``waiting`` (e.g. in start()), unless ``watched``, a task it depends on, ends first:
        then raise that task's error instead of waiting forever."""
        waiter = asyncio.ensure_future(waiting)
        await asyncio.wait({waiter, watched}, return_when=asyncio.FIRST_COMPLETED)
        if not waiter.done():
            waiter.cancel()
            watched.result()
            raise RuntimeError(f"{watched.get_coro().__qualname__} ended")
        return waiter.result()

    async def _watchdog(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            if self._progress_since_ping:
                self._progress_since_ping = False
                self.notifier.watchdog()
            else:
                self.log.warning("main loop made no progress for %.1f s; withholding the watchdog ping",
                                 time.monotonic() - self._last_progress)

    async def _reloader(self) -> None:
        while True:
            await self.reload_requested.wait()
            self.reload_requested.clear()
            if self.config_loader is None:
                continue
            self.notifier.reloading()
            try:
                config = self.config_loader()
            except settings.ConfigError as exc:
                self.log.error("reload refused, keeping the running configuration: %s", exc)
            else:
                await self.reload(config)
                self.log.info("configuration reloaded")
            self.notifier.ready("running")  # READY=1 ends the RELOADING=1 state in systemd

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop_requested.set)
        loop.add_signal_handler(signal.SIGINT, self.stop_requested.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload_requested.set)
        try:
            self.notifier.status("starting")
            starting = asyncio.ensure_future(self.start())
            stopping = asyncio.ensure_future(self.stop_requested.wait())
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not starting.done():  # stop requested while still starting
                starting.cancel()
                await asyncio.gather(starting, return_exceptions=True)
                return 0
            stopping.cancel()
            starting.result()
            self.notifier.ready("running")
            self.log.info("started")
            await self._serve()
            return 0
        finally:
            self.notifier.stopping()
            await self.shutdown()
            self.log.info("stopped")

    async def _serve(self) -> None:
        background = list(self.tasks())
        interval = watchdog_interval()
        if interval:
            background.append(self._watchdog(interval))
        background.append(self._reloader())
        running = [asyncio.ensure_future(c) for c in background]
        stop = asyncio.ensure_future(self.stop_requested.wait())
        try:
            done, _ = await asyncio.wait({stop, *running}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stop:
                    task.result()  # a task that ended on its own is a failure: re-raise it
                    raise RuntimeError(f"task {task.get_coro().__qualname__} ended unexpectedly")
        finally:
            for task in (stop, *running):
                task.cancel()
            await asyncio.gather(stop, *running, return_exceptions=True)


def load_or_exit(program: str, argv: list[str] | None) -> tuple[settings.Config, bool]:
    try:
        return settings.load(program, argv)
    except settings.ConfigError as exc:
        print(f"{program}: configuration error: {exc}", file=sys.stderr)
        checking = "--check-config" in (sys.argv[1:] if argv is None else argv)
        raise SystemExit(1 if checking else 2) from None


def run_program(program: str, factory: Callable[[settings.Config], Daemon], argv: list[str] | None = None) -> int:
    """The body of every daemon's main()."""
    config, check_only = load_or_exit(program, argv)
    if check_only:
        print(settings.describe(config))
        print(f"{program}: configuration OK", file=sys.stderr)
        return 0
    log.setup(config.debug)
    daemon = factory(config)
    daemon.config_loader = lambda: settings.load(program, argv)[0]
    try:
        return asyncio.run(daemon.run())
    except Exception:  # noqa: BLE001 - last resort: log it the journald way, exit non-zero
        logging.getLogger(program).exception("fatal error")
        return 1
