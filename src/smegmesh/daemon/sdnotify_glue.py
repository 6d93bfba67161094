"""systemd's notify protocol for ``Type=notify`` units, through ``sdnotify``.

Under systemd (``NOTIFY_SOCKET`` set) the daemon sends ``READY=1`` once its
control socket and APIs are up, ``WATCHDOG=1`` every half ``WATCHDOG_USEC``
from the event loop itself (so a wedged loop stops the pings and systemd
restarts the service), ``STATUS=`` again whenever the daemon's one-line
status changes (``systemctl status`` shows it), and ``STOPPING=1`` on
shutdown. Without ``NOTIFY_SOCKET`` every call is a no-op.

Sends never block the event loop: the datagram socket is non-blocking, and a
full or vanished notify socket is logged (once) and otherwise ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Mapping

import sdnotify

__all__ = ["Notifier"]

log = logging.getLogger(__name__)

# The watchdog is pinged at most this often, whatever WATCHDOG_USEC says.
MIN_PING_INTERVAL = 0.05
#: how often the STATUS= line is looked at again (sent when it changed)
STATUS_EVERY_S = 2.0


class Notifier:
    """Readiness, watchdog and stopping notifications; inert when ``enabled`` is false."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self._n: sdnotify.SystemdNotifier | None = None
        self._warned = False
        self._watchdog: asyncio.Task[None] | None = None
        self._status: asyncio.Task[None] | None = None
        self.watchdog_interval = _watchdog_interval(env)
        if not env.get("NOTIFY_SOCKET"):
            return
        try:
            # sdnotify reads NOTIFY_SOCKET from the real environment.
            n = sdnotify.SystemdNotifier(debug=True)
            n.socket.setblocking(False)
        except OSError as e:
            log.warning("NOTIFY_SOCKET=%s unusable: %s", env.get("NOTIFY_SOCKET"), e)
            return
        self._n = n

    @property
    def enabled(self) -> bool:
        return self._n is not None

    def notify(self, state: str) -> None:
        if self._n is None:
            return
        try:
            self._n.notify(state)
        except OSError as e:
            if not self._warned:
                self._warned = True
                log.warning("systemd notification %r not sent: %s", state.split("=")[0], e)

    def ready(self, status: str | Callable[[], str] | None = None) -> None:
        """``READY=1`` (with ``STATUS=``), then start the watchdog pings if asked for.

        ``status`` as a function: its line is sent again whenever it changes
        (looked at every :data:`STATUS_EVERY_S`), so ``systemctl status`` follows.
        """
        line = status() if callable(status) else status
        self.notify("READY=1" + (f"\nSTATUS={line}" if line else ""))
        if self._n is not None and callable(status) and self._status is None:
            self._status = asyncio.get_running_loop().create_task(
                self._status_loop(status, line or ""), name="systemd-status"
            )
        if self._n is not None and self.watchdog_interval is not None and self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().create_task(
                self._ping_loop(self.watchdog_interval), name="systemd-watchdog"
            )
            log.info("systemd watchdog: pinging every %.1f s", self.watchdog_interval)

    def stopping(self) -> None:
        """``STOPPING=1`` and no more watchdog pings."""
        for task in (self._watchdog, self._status):
            if task is not None:
                task.cancel()
        self._watchdog = self._status = None
        self.notify("STOPPING=1")

    async def _status_loop(self, status: Callable[[], str], sent: str) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                await asyncio.sleep(STATUS_EVERY_S)
                line = status()
                if line != sent:
                    self.notify(f"STATUS={line}")
                    sent = line

    async def _ping_loop(self, interval: float) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                self.notify("WATCHDOG=1")
                await asyncio.sleep(interval)


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Half of ``WATCHDOG_USEC`` in seconds, or None when no watchdog is asked of us."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (e.g. our parent)
    try:
        value = int(usec)
    except ValueError:
        return None
    if value <= 0:
        return None
    return max(MIN_PING_INTERVAL, value / 2e6)
