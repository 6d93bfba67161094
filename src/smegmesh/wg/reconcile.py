"""Reconcile desired WireGuard + host configuration with the live system.

:class:`Reconciler` keeps, per interface, a cache of the live state it last
read or produced. ``apply`` diffs the desired state against that cache and
applies only the difference, so a one-peer change costs one peer operation
and no full ``get=1`` dump. The cache is dropped and the live state re-read in
full on any error, when the backend reports a lost device (``check``) and at
least every ``verify_interval`` seconds (``verify`` forces it).

The cache holds what the backend says it applied: a peer endpoint it left out
(a name that does not resolve now, wg/resolver.py) is not in it, so the next
diff sends it again, and ``check`` (smegd's health check, every 5 s) applies
again from the cache while one is left out: a late answer is set within one
check, not at the next full read. It also sends again the endpoints whose
names resolve to a new address now (``WgBackend.moved_endpoints``): a moved
address is set within a name's TTL (60 s) and a check.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from smegmesh.core.wgconfig import HostConfig, HostStatus, InterfaceConfig, InterfaceStatus
from smegmesh.core.wgdiff import (
    HostOp,
    WgOp,
    apply_host_ops,
    apply_ops,
    diff_host,
    diff_interface,
)
from smegmesh.net.host import HostBackend
from smegmesh.wg.base import InterfaceNotFound, WgBackend

log = logging.getLogger(__name__)


@dataclass
class ReconcileResult:
    interface: str
    wg_ops: list[WgOp] = field(default_factory=list)
    host_ops: list[HostOp] = field(default_factory=list)
    created: bool = False  # the device was (re)created
    full_read: bool = False  # live state was read from the system
    left_out: bool = False  # the backend left an endpoint out (its name did not resolve now)
    retried: bool = False  # the first attempt failed and was redone from a full read
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(self.wg_ops or self.host_ops or self.created)


@dataclass
class _Cache:
    wg: InterfaceStatus
    host: HostStatus
    read_at: float
    desired_if: InterfaceConfig | None = None
    desired_host: HostConfig | None = None
    #: the last apply left an endpoint out: ``check`` applies again
    left_out: bool = False


class Reconciler:
    """Applies desired state through a :class:`WgBackend` and a :class:`HostBackend`.

    Thread-safe; meant to be called from one worker thread of the daemon.
    """

    def __init__(
        self,
        backend: WgBackend,
        host: HostBackend,
        *,
        verify_interval: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.host = host
        self.verify_interval = verify_interval
        self.clock = clock
        self._cache: dict[str, _Cache] = {}
        self._lock = threading.RLock()
        #: ops the health check applied again (endpoints resolved late), per
        #: interface, until :meth:`take_applied_again`
        self._again: dict[str, list[WgOp]] = {}
        #: interfaces found set down outside smegd and not found up since (told once)
        self._told_down: set[str] = set()

    def interfaces(self) -> list[str]:
        return list(self._cache)

    def invalidate(self, name: str | None = None) -> None:
        """Forget cached live state (of one interface, or all); next apply re-reads."""
        with self._lock:
            if name is None:
                for c in self._cache.values():
                    c.read_at = float("-inf")
            elif name in self._cache:
                self._cache[name].read_at = float("-inf")

    def exists(self, name: str) -> bool:
        """Whether the device is there (one read; any error but its absence is raised)."""
        with self._lock:
            try:
                self.backend.read(name)
            except InterfaceNotFound:
                return False
            return True

    def apply(self, desired_if: InterfaceConfig, desired_host: HostConfig) -> ReconcileResult:
        """Make the interface and its host state match; only the diff is applied."""
        if desired_host.interface != desired_if.name:
            raise ValueError("desired_host.interface must equal desired_if.name")
        with self._lock:
            t0 = time.perf_counter()
            try:
                result = self._apply_once(desired_if, desired_host)
            except Exception as exc:
                log.warning(
                    "reconcile %s failed (%s); retrying from a full read", desired_if.name, exc
                )
                self.invalidate(desired_if.name)
                result = self._apply_once(desired_if, desired_host)
                result.retried = True
            result.seconds = time.perf_counter() - t0
            return result

    def _apply_once(self, want_if: InterfaceConfig, want_host: HostConfig) -> ReconcileResult:
        name = want_if.name
        res = ReconcileResult(name)
        cache = self._cache.get(name)
        now = self.clock()
        if cache is None or now - cache.read_at >= self.verify_interval:
            res.created = self.backend.ensure_interface(name)
            cache = _Cache(self.backend.read(name), self.host.read(name), now)
            self._cache[name] = cache
            res.full_read = True
        cache.desired_if, cache.desired_host = want_if, want_host
        ops = diff_interface(want_if, cache.wg)
        cache.left_out = False
        if ops:
            # If applying fails the live state is unknown: a full read comes next time.
            saved = cache.read_at
            cache.read_at = float("-inf")
            # As applied: without the endpoints left out (resolve_ops), so the
            # cache holds what WireGuard has and they are sent again next time.
            res.wg_ops = list(self.backend.apply(name, ops))
            cache.wg = apply_ops(cache.wg, res.wg_ops)
            cache.read_at = saved
            res.left_out = res.wg_ops != ops
        res.host_ops = diff_host(want_host, cache.host)
        if res.host_ops:
            saved = cache.read_at
            cache.read_at = float("-inf")
            self.host.apply(name, res.host_ops)
            cache.host = apply_host_ops(cache.host, res.host_ops)
            cache.read_at = saved
        # only once all applied: an apply that fails is retried by its caller, not by check
        cache.left_out = res.left_out
        return res

    def verify(self, name: str | None = None) -> list[ReconcileResult]:
        """Re-read live state in full and re-apply the last desired state."""
        with self._lock:
            names = [name] if name is not None else list(self._cache)
            out = []
            for n in names:
                cache = self._cache.get(n)
                if cache is None or cache.desired_if is None or cache.desired_host is None:
                    continue
                self.invalidate(n)
                out.append(self.apply(cache.desired_if, cache.desired_host))
            return out

    def check(self) -> list[ReconcileResult]:
        """Health check of every interface (cheap when healthy): a device the
        backend had to recreate gets its full desired state re-applied, and one
        whose last apply left an endpoint out is applied again from the cache
        (no full read; the resolver answers from what it holds, so a name that
        never resolves costs a diff and a lookup in the background now and then);
        one set down outside smegd is brought up again from a full read.

        Returns the interfaces (re)created, ``created`` set, also those whose
        re-apply failed (logged; the next apply redoes it from a full read).
        A check that fails says nothing of a loss: that interface's state is
        re-read and re-applied, and it is not reported as created."""
        with self._lock:
            out = []
            for n, cache in list(self._cache.items()):
                try:
                    lost = self.backend.check(n)
                except Exception as exc:
                    log.warning("health check of %s failed: %s", n, exc)
                    lost = None
                if lost is False and not self._set_down(n, cache):
                    # moved names looked for even while an endpoint is left out:
                    # a member's name that never resolves must not hide the others'
                    moved = self._names_moved(n, cache)
                    if cache.left_out or moved:
                        self._apply_again(cache)
                    continue
                if lost:
                    log.debug("interface %s was lost; re-applying its configuration", n)
                cache.read_at = float("-inf")
                if cache.desired_if is None or cache.desired_host is None:
                    continue
                try:
                    res = self.apply(cache.desired_if, cache.desired_host)
                except Exception as exc:
                    log.warning("cannot configure %s again: %s", n, exc)
                    res = ReconcileResult(n)
                res.created = res.created or bool(lost)
                if res.created:
                    out.append(res)
            return out

    def _set_down(self, name: str, cache: _Cache) -> bool:
        """Whether ``name`` was set down outside smegd while we want it up (logged
        once until it is found up: a bring-up that fails is retried every check).

        The kernel drops a down link's IPv6 addresses and routes with it, and
        WireGuard sends nothing: every tunnel of the mesh is dead until the
        full read (every ``verify_interval``) would put it back, and a client
        would blame its peer for the silence meanwhile. A full read and apply
        follow at once.
        """
        if cache.desired_host is None or not cache.desired_host.up:
            return False
        try:
            down = self.host.is_up(name) is False
        except Exception as exc:
            log.debug("cannot read the link state of %s: %s", name, exc)
            return False
        if down and name not in self._told_down:  # once while it stays down
            self._told_down.add(name)
            log.warning(
                "%s was set down outside smegd (its addresses and routes went with it): "
                "bringing it up again (smegd keeps its mesh interfaces up while in the mesh; "
                "a client does not blame its peer for the silence)",
                name,
            )
        elif not down:
            self._told_down.discard(name)
        return down

    def _names_moved(self, name: str, cache: _Cache) -> bool:
        """Whether endpoint names of ``name``'s peers resolve to new addresses now;
        those peers' endpoints are dropped from the cache, so the next diff sends
        them again (and the backend resolves them to the new address).

        The cache holds a named endpoint as given, so without this the diff saw
        nothing to do and WireGuard kept the old address until the full read
        (``verify_interval``, 300 s in smegd): a member on a dynamic address was
        unreachable from a client behind NAT for up to five minutes after its
        address changed. The backend never waits for DNS here (``SentNames``).
        """
        # only peers whose desired endpoint is that name: one the member no
        # longer publishes (None, learnt from handshakes) is not sent again by
        # the diff, and was found moved again every check, forever; the backend
        # forgets it (no lookup a TTL for it either)
        want = cache.desired_if.peers if cache.desired_if is not None else {}
        wanted = {k: p.endpoint for k, p in want.items() if p.endpoint is not None}
        try:
            moved = self.backend.moved_endpoints(name, wanted)
        except Exception as exc:
            log.debug("cannot compare endpoint names of %s: %s", name, exc)
            return False
        peers = dict(cache.wg.peers)
        moved = [key for key in moved if key in peers and key in wanted]
        if not moved:
            return False
        for key in moved:
            peers[key] = replace(peers[key], endpoint=None)
        cache.wg = replace(cache.wg, peers=peers)
        log.info(
            "%s: %d peer endpoint name(s) resolve to a new address; giving it to WireGuard",
            name,
            len(moved),
        )
        return True

    def _apply_again(self, cache: _Cache) -> None:
        """The last desired state once more, from the cache (an endpoint was left out).

        A failure ends the retries (the next apply of the daemon's, or the full
        read, tries again): an apply that fails each time would otherwise cost
        two full reads and two warnings every health check.
        """
        want_if, want_host = cache.desired_if, cache.desired_host
        if want_if is None or want_host is None:
            return
        try:
            res = self.apply(want_if, want_host)
        except Exception as exc:
            now = self._cache.get(want_if.name)
            if now is not None:
                now.left_out = False
            log.warning("cannot configure %s again: %s", want_if.name, exc)
            return
        if res.wg_ops:
            self._again.setdefault(want_if.name, []).extend(res.wg_ops)
            log.info(
                "%s: %d WireGuard ops applied again (endpoint names resolved late or moved)",
                want_if.name,
                len(res.wg_ops),
            )

    def take_applied_again(self) -> dict[str, list[WgOp]]:
        """The WireGuard ops :meth:`check` applied again since the last call, per interface.

        What a caller does after an apply (start handshakes with peers whose
        endpoint was just set) it does with these too.
        """
        with self._lock:
            again, self._again = self._again, {}
            return again

    def remove(self, name: str) -> None:
        """Remove the interface and everything we added for it."""
        with self._lock:
            self._cache.pop(name, None)
            self._again.pop(name, None)
            self._told_down.discard(name)
            try:
                self.host.remove(name)
            finally:
                self.backend.remove_interface(name)

    def close(self) -> None:
        with self._lock:
            self._cache.clear()
