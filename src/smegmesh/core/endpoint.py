"""``host:port`` strings: the one parser and formatter used everywhere. Pure.

Accepted forms: ``host:port``, ``a.b.c.d:port``, ``[v6]:port``; with a
``default_port``, also ``host``, ``[v6]`` and a bare ``v6`` address.
"""

from __future__ import annotations

import ipaddress


def split_host_port(value: str, default_port: int | None = None) -> tuple[str, int]:
    """Split into ``(host, port)``; IPv6 hosts come back without brackets.

    Raises ``ValueError`` with a one-line, user-facing message when malformed.
    """
    text = value.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError("must be host:port, IPv6 hosts in brackets like [::1]:8080")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} in brackets is not an IPv6 address") from None
        if rest and not rest.startswith(":"):
            raise ValueError(f"unexpected {rest!r} after ']' in {text!r}")
        port_s = rest[1:]
    elif default_port is not None and text.count(":") != 1:
        host, port_s = text, ""  # a bare host or a bare IPv6 address
        if ":" in host:
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ValueError(f"{host!r} is not an IPv6 address") from None
    else:
        host, sep, port_s = text.rpartition(":")
        if not sep:
            raise ValueError("must be host:port, e.g. 127.0.0.1:8080 or [::1]:8080")
        if ":" in host:
            raise ValueError("IPv6 hosts must be in brackets, e.g. [::1]:8080")
    if not host:
        raise ValueError("must be host:port, e.g. 127.0.0.1:8080 or [::1]:8080")
    if not port_s and default_port is not None:
        return host, default_port
    if not port_s.isdigit() or not 1 <= int(port_s) <= 65535:
        raise ValueError(f"port must be an integer between 1 and 65535 (got {port_s!r})")
    return host, int(port_s)


def no_scope(text: str) -> str:
    """``text`` if it carries no IPv6 scope id (``%...``); else ``ValueError``.

    ``ipaddress`` takes anything after a ``%`` in an IPv6 address or network
    as its scope id, newlines and spaces included, and ``str()`` gives it back
    as it came: a scoped address checked by ``ipaddress`` alone can carry
    lines of its own into a WireGuard UAPI request or a wg-quick file. A scope
    names an interface of one host, so it means nothing in what nodes tell
    each other: addresses, networks and endpoints from the wire go through
    this before ``ipaddress``.
    """
    if "%" in text:
        raise ValueError("an IPv6 scope id (%...) means nothing to another host")
    return text


def join_host_port(host: str, port: int) -> str:
    """``[v6]:port`` for IPv6 hosts, ``host:port`` otherwise."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listen_error(key: str | None, host: str, port: int, exc: OSError) -> OSError:
    """The one-line error of a listener that cannot bind, naming its config key.

    ``cannot listen on 127.0.0.1:9100 (metricsListen): address already in use``
    """
    reason = exc.strerror or str(exc) or type(exc).__name__
    reason = reason[:1].lower() + reason[1:]
    named = f" ({key})" if key else ""
    return OSError(f"cannot listen on {join_host_port(host, port)}{named}: {reason}")
