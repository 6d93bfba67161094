"""``SIGHUP``: re-read the configuration file and apply what can change live.

Live (applied at once): ``logLevel``, ``logFormat``, the gossip parameters
(``syncInterval``, ``pullInterval``, ``clusterSize``, ``interClusterChance``,
``branch``, ``infectionCount``), ``heartbeatInterval`` (liveness), and the keys
the daemon reads each time it uses them (``acceptDefaults``,
``bridgeMasquerade``, ``baseConfiguration``: the latter for meshes created or
joined from now on), and the TCP API's token and TLS pair, compared by content
(a file rotated in place counts): the running API takes them. Every other key
(ports, listeners, paths, backend...) needs a restart: a change is logged
naming the keys, and the running values stay. A file that does not load keeps
the whole running configuration, and the log says why; so does one whose live
values break a rule between keys with the running value of a restart key
(``Config.check_rules``), or that the engine refuses.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from smegmesh.core.gossip import GossipParams
from smegmesh.core.liveness import LivenessParams
from smegmesh.daemon.config import Config, ConfigError, load_config
from smegmesh.daemon.logsetup import configure_logging

__all__ = ["LIVE_KEYS", "changed_keys", "gossip_params", "liveness_params", "reload_config"]

log = logging.getLogger("smegd")

_GOSSIP = ("sync_interval", "pull_interval", "cluster_size", "inter_cluster_chance", "branch")
_GOSSIP_FIELDS = (*_GOSSIP, "infection_count")
#: the TCP API's token: applied live (the running API's guard takes it)
_TOKEN = ("api_token", "api_token_file")
#: the TCP API's TLS pair: live while the API serves HTTPS and still will
_TLS = ("api_tls_certificate", "api_tls_key")

#: attribute names of the keys a reload applies without a restart
LIVE_KEYS = frozenset(
    {
        "log_level",
        "log_format",
        *_GOSSIP_FIELDS,
        "heartbeat_interval",
        "accept_defaults",
        "bridge_masquerade",
        "base_configuration",
        *_TOKEN,
    }
)


def gossip_params(config: Config) -> GossipParams:
    """The core's parameters; ``dissemination`` as ``GossipParams.as_dissemination``."""
    params = GossipParams(
        sync_interval_ms=int(config.sync_interval * 1000),
        pull_interval_ms=int(config.pull_interval * 1000),
        cluster_size=config.cluster_size,
        inter_cluster_chance=config.inter_cluster_chance,
        branch=config.branch,
        infection_count=config.infection_count,
        tree_fanout=config.tree_fanout,
    )
    kept = "infection_count" in config.model_fields_set
    return params.as_dissemination(config.dissemination, keep_infection_count=kept)


def liveness_params(config: Config) -> LivenessParams:
    return LivenessParams.from_heartbeat(int(config.heartbeat_interval * 1000))


def _key(name: str) -> str:
    return Config.model_fields[name].alias or name


def changed_keys(old: Config, new: Config) -> list[str]:
    """Attribute names of the top-level keys whose values differ."""
    return [name for name in Config.model_fields if getattr(old, name) != getattr(new, name)]


def _api_secrets(daemon: Any, old: Config, new: Config, changed: list[str]) -> list[str]:
    """The TCP API's token and TLS keys to apply live: changed in value, or only in
    content (a file rotated in place, which ``changed_keys`` cannot see)."""
    keys = []
    if new.api_bearer_token != old.api_bearer_token:
        keys += [n for n in _TOKEN if n in changed or getattr(new, n) is not None]
    server = getattr(daemon, "tcp_server", None)
    serving_tls = server is not None and server.tls and new.api_tls_certificate is not None
    if serving_tls and (new._tls_digest != old._tls_digest or set(_TLS) & set(changed)):
        keys += [n for n in _TLS if n in changed] or ["api_tls_certificate"]
    return keys


def _refuse(*problems: str) -> bool:
    """Log each problem; False (not reloaded)."""
    for problem in problems:
        log.error("configuration not reloaded, keeping the running one: %s", problem)
    return False


def reload_config(daemon: Any, path: str | Path, log_format: str | None = None) -> bool:
    """Re-read ``path`` and apply it to the running ``daemon``; False if it did not load.

    ``log_format`` is the ``--log-format`` flag, which keeps overriding the file.
    Nothing changes unless all of it can: the merged configuration and the
    engine's parameters are made before the running ones are replaced.
    """
    try:
        new = load_config(path)
    except ConfigError as e:
        return _refuse(*e.problems)
    if log_format is not None:
        new = new.model_copy(update={"log_format": log_format})
    old: Config = daemon.config
    changed = changed_keys(old, new)
    secrets = _api_secrets(daemon, old, new, changed)
    live = [n for n in changed if n in LIVE_KEYS or n in secrets]
    live += [n for n in secrets if n not in live]
    restart = [n for n in changed if n not in live]
    cfg = old
    if live:
        cfg = old.model_copy(update={n: getattr(new, n) for n in live})
        cfg._warnings = new.warnings
        cfg._file_token = new._file_token  # the token keys are live
        if set(_TLS) & set(live):
            cfg._tls_digest = new._tls_digest
        try:  # each value is valid; the running ones of restart keys may not go with them
            cfg.check_rules()
        except ValueError as e:
            keep = ", ".join(_key(n) for n in restart)
            why = f" (with the running {keep}, which a restart would change)" if keep else ""
            return _refuse(*(problem + why for problem in str(e).splitlines()))
    retune = bool(set(_GOSSIP_FIELDS) & set(live) or "heartbeat_interval" in live)
    try:
        params = (gossip_params(cfg), liveness_params(cfg)) if retune else None
    except ValueError as e:  # the engine's own checks: refused before anything changed
        return _refuse(str(e))
    daemon.config = cfg
    _apply_live(daemon, live, params)
    _apply_api_secrets(daemon, old, live)
    _report(daemon, path, old, new, live, restart)
    return True


def _apply_live(daemon: Any, live: list[str], params: tuple[Any, Any] | None) -> None:
    """Make the running daemon follow the live keys that changed (``daemon.config`` is new)."""
    cfg: Config = daemon.config
    if {"log_level", "log_format"} & set(live):
        configure_logging(cfg.log_level, cfg.log_format)
    if params is not None:
        daemon.gossip, daemon.liveness = params
        now = int(time.time() * 1000)
        for rt in list(daemon.meshes.values()):
            rt.node.retune(daemon.gossip, daemon.liveness, now)
            rt.wake.set()
    if {"accept_defaults", "bridge_masquerade"} & set(live):
        for rt in daemon.meshes.values():
            rt.dirty_wg = True
        wake = getattr(daemon, "_reconcile_wake", None)
        if wake is not None:
            wake.set()


def _apply_api_secrets(daemon: Any, old: Config, live: list[str]) -> None:
    """The running TCP API takes the new token, and the new certificate, if they changed."""
    cfg: Config = daemon.config
    token = cfg.api_bearer_token
    app = getattr(daemon, "tcp_app", None)
    keys = [_key(n) for n in live if n in _TOKEN]
    if app is not None and keys and token is not None and token != old.api_bearer_token:
        app.set_token(token)
        log.info(
            "configuration: %s: the TCP API takes the new token now; the old one, and "
            "dashboard sessions opened with it, no longer work",
            ", ".join(keys),
        )
    keys = [_key(n) for n in live if n in _TLS]
    if not keys:
        return
    try:
        daemon.tcp_server.reload_tls(cfg.api_tls_certificate, cfg.api_tls_key)
    except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
        log.warning(
            "configuration: %s changed but the TCP API cannot load the pair (%s): it serves "
            "the previous certificate until a restart of smegd",
            ", ".join(keys),
            getattr(e, "reason", None) or e,
        )
        return
    log.info(
        "configuration: %s: the TCP API serves the new certificate from the next connection on",
        ", ".join(keys),
    )


def _report(
    daemon: Any, path: str | Path, old: Config, new: Config, live: list[str], restart: list[str]
) -> None:
    """The log lines (and the ``config.reloaded`` event) of a reload that was applied."""
    if restart:
        log.warning(
            "configuration: %s changed but need%s a restart of smegd to take effect "
            "(running with the previous value%s)",
            ", ".join(_key(n) for n in restart),
            "s" if len(restart) == 1 else "",
            "" if len(restart) == 1 else "s",
        )
    for w in new.warnings:
        if w not in old.warnings:
            log.warning("%s", w)
    events = getattr(daemon, "events", None)
    if events is not None:  # the INFO line and the event (GET /v1/events) in one
        events.publish(
            "config.reloaded",
            detail={
                "path": str(path),
                "changed": [_key(n) for n in live],
                "restart_needed": [_key(n) for n in restart],
            },
        )
    else:
        names = ", ".join(_key(n) for n in live) if live else "nothing that applies live"
        log.info("configuration reloaded from %s (changed: %s)", path, names)
