"""Process set-up of ``smegd``: malloc tuning, logging, signals, sdnotify, the event loop."""

from __future__ import annotations

import asyncio
import logging
import signal

from smegmesh.daemon import service as svc
from smegmesh.daemon.config import Config
from smegmesh.daemon.logsetup import configure_logging
from smegmesh.daemon.malloc import limit_malloc_arenas
from smegmesh.daemon.node import Daemon
from smegmesh.daemon.sdnotify_glue import Notifier
from smegmesh.daemon.statelock import StateDirLocked
from smegmesh.wg.base import WgError

log = logging.getLogger("smegd")


async def _amain(
    config: Config, config_path: str | None = None, log_format: str | None = None
) -> int:
    daemon = Daemon(config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if config_path is not None:
        from smegmesh.daemon.reload import reload_config

        def _hup() -> None:
            ok = reload_config(daemon, config_path, log_format)
            daemon.metrics.reloads.labels("ok" if ok else "failed").inc()

        loop.add_signal_handler(signal.SIGHUP, _hup)
    else:  # nothing to reload: SIGHUP must not kill the daemon either
        loop.add_signal_handler(
            signal.SIGHUP, lambda: log.warning("SIGHUP ignored: no configuration file")
        )
    try:
        await daemon.start()
    except StateDirLocked as e:
        log.error("%s", e)
        return 1
    except svc.ServiceError as e:
        log.error("%s", e.message)
        return 1
    except (OSError, WgError) as e:  # a listener's port, no WireGuard backend...
        log.error("cannot start: %s", e)
        await daemon.stop()
        return 1
    systemd = Notifier()  # no-op unless run by systemd (NOTIFY_SOCKET)
    systemd.ready(lambda: _status_line(daemon))
    await stop.wait()
    log.info("shutting down")
    systemd.stopping()
    await daemon.stop()
    return 0


def _status_line(daemon: Daemon) -> str:
    """The one line ``systemctl status smegd`` shows (systemd's ``STATUS=``)."""
    line = f"serving {len(daemon.meshes)} mesh(es)"
    if daemon.unrestored:
        line += f"; {len(daemon.unrestored)} saved mesh(es) not running (smegctl status)"
    return line


def run(config: Config, config_path: str | None = None, log_format: str | None = None) -> int:
    """Run the daemon until SIGTERM/SIGINT; SIGHUP reloads ``config_path``."""
    limit_malloc_arenas()
    configure_logging(config.log_level, config.log_format)
    return asyncio.run(_amain(config, config_path, log_format))
