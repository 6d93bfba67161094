"""The dashboard in a real headless Chromium against a real mesh in namespaces (issue 16).

Three peers and a client behind NAT (the demo's test bed), each a real
``smegd`` with wireguard-go; peer0 serves its TCP API (and so ``/ui/``) on
127.0.0.1 inside its namespace, and Chromium (Debian's ``chromium``, driven by
Playwright; no downloaded browser) runs in that namespace too. Checked without
ever reloading the page: all four nodes are shown; an alias set with
``smegctl`` appears; a new node that joins appears; a node killed with
``kill -9`` disappears within the prune time (the time is printed). A wrong
token is refused on the login page.

Screenshots go to ``$SMEG_UI_SCREENSHOTS`` (default: the test's tmp dir).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from envcheck import missing
from smegmesh.testbed.browser import CHROMIUM, chromium_missing, chromium_page
from smegmesh.testbed.cluster import Cluster, Daemon, Timings
from smegmesh.testbed.netns import Testbed, wait_until

pytestmark = pytest.mark.netns

API_PORT = 8470
TOKEN = "ui-test-token-0123456789abcdef"


def _browser_in(ns: str, where: Path) -> str:
    """An executable that runs Debian's chromium in namespace ``ns`` (Playwright's pipes pass)."""
    path = where / "chromium-in-netns"
    path.write_text(f'#!/bin/sh\nexec ip netns exec {ns} {CHROMIUM} "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def _when(predicate: Callable[[], bool], t0: float, timeout: float = 120.0) -> list[float]:
    """In a thread: the seconds from ``t0`` until ``predicate`` holds (the daemon's view)."""
    out: list[float] = []

    def run() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if predicate():
                    out.append(time.monotonic() - t0)
                    return
            time.sleep(0.05)

    threading.Thread(target=run, daemon=True).start()
    return out


def _aliases(d: Daemon, mesh_id: str) -> set[str]:
    m = d.get_mesh(mesh_id) or {}
    return {n["alias"] for n in m.get("nodes", [])}


def _keys(d: Daemon, mesh_id: str) -> set[str]:
    m = d.get_mesh(mesh_id) or {}
    return {n["public_key"] for n in m.get("nodes", [])}


def _rows(page: Any) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = page.eval_on_selector_all(
        "section.mesh tbody tr",
        "els => els.map(e => ({key: e.dataset.key, alias: e.dataset.alias, "
        "address: e.dataset.address, role: e.dataset.role}))",
    )
    return rows


def _graph_keys(page: Any) -> set[str]:
    keys: list[str] = page.evaluate(
        "() => window.smeg.cy ? window.smeg.cy.nodes().filter(n => n.data('key'))"
        ".map(n => n.data('key')) : []"
    )
    return set(keys)


def test_dashboard_live_in_chromium(testbed: Testbed, tmp_path: Path) -> None:
    reason = chromium_missing()
    if reason:  # a dev dependency and a Debian package: missing in CI is a failure, not a skip
        missing(reason)
    shots = Path(os.environ.get("SMEG_UI_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    timings = Timings()

    with Cluster(testbed, timings) as c:
        p0 = c.add("peer", start=False)
        p0.edit_config(apiListen=f"127.0.0.1:{API_PORT}", apiToken=TOKEN)
        p0.start()
        p1, p2 = c.add_many(2, "peer")
        c3 = c.add("client")
        members = [p0, p1, p2, c3]
        mesh_id, _ = c.form_mesh(members)
        keys = c.keys(mesh_id, members)
        c.wait_members(mesh_id, members, set(keys.values()), timeout=60)
        for d, alias in ((p0, "hub"), (p2, "cache"), (c3, "laptop")):
            d.ctl("put-alias", "--meshid", mesh_id, "--alias", alias)
        p1.ctl("set-service", "--meshid", mesh_id, "--service", "http", "--value", "8080")

        executable = _browser_in(p0.node.ns, tmp_path)
        with chromium_page(tmp_path / "profile", executable=executable, timeout_ms=60_000) as page:
            base = f"http://127.0.0.1:{API_PORT}"

            # -- a wrong token is refused, with a clear message
            page.goto(f"{base}/ui/")
            assert page.url.endswith("/ui/login")
            page.fill("#token", "not-the-token")
            page.click("button[type=submit]")
            err = page.wait_for_selector("#login-error")
            assert "Wrong token" in err.inner_text()
            page.screenshot(path=str(shots / "login-refused.png"))

            # -- the right one opens the dashboard with all four nodes
            page.fill("#token", TOKEN)
            page.click("button[type=submit]")
            page.wait_for_url(f"{base}/ui/")
            page.wait_for_function(
                "() => document.querySelectorAll('section.mesh tbody tr').length === 4"
            )
            assert {r["key"] for r in _rows(page)} == set(keys.values())
            page.wait_for_function("() => window.smeg.cy && window.smeg.cy.nodes().length >= 5")
            assert _graph_keys(page) == set(keys.values())
            page.wait_for_selector("#live.pill-on")  # the event stream is connected
            page.evaluate("() => { window.__notReloaded = true; }")
            page.screenshot(path=str(shots / "four-nodes.png"))

            # -- an alias set with smegctl appears
            t0 = time.monotonic()
            d_alias = _when(lambda: "web-one" in _aliases(p0, mesh_id), t0)
            p1.ctl("put-alias", "--meshid", mesh_id, "--alias", "web-one")
            page.wait_for_selector('tr[data-alias="web-one"]')
            t_alias = time.monotonic() - t0

            # -- a node that joins appears
            p4 = c.add("peer")
            token = c.invite(p0, mesh_id)
            t0 = time.monotonic()
            c.join(p4, token)
            p4_key = p4.public_key()
            p4.ctl("put-alias", "--meshid", mesh_id, "--alias", "newcomer")
            page.wait_for_selector(f'tr[data-key="{p4_key}"]')
            t_join = time.monotonic() - t0
            page.wait_for_function(
                "() => document.querySelectorAll('section.mesh tbody tr').length === 5"
            )

            # -- a node killed with kill -9 disappears, without a reload
            gone = keys[p2.name]
            t0 = time.monotonic()
            d_prune = _when(lambda: gone not in _keys(p0, mesh_id), t0)
            p2.kill()  # SIGKILL
            page.wait_for_selector(f'tr[data-key="{gone}"]', state="detached", timeout=90_000)
            t_prune = time.monotonic() - t0
            page.wait_for_function(
                f"() => !window.smeg.cy.nodes().some(n => n.data('key') === {gone!r})"
            )
            assert page.evaluate("() => window.__notReloaded === true")
            assert len(_rows(page)) == 4

            # -- search by alias and by address; the side panel
            page.fill("#search", "web-one")
            page.wait_for_function(
                "() => document.querySelectorAll('section.mesh tbody tr').length === 1"
            )
            page.fill("#search", "")
            addr = c.addresses(mesh_id, [c3])[c3.name]
            page.fill("#search", addr)
            page.wait_for_function(
                "() => document.querySelectorAll('section.mesh tbody tr').length === 1"
            )
            assert _rows(page)[0]["address"] == addr
            page.fill("#search", "")
            page.click('tr[data-alias="web-one"]')
            panel = page.wait_for_selector("#panel:not([hidden])")
            assert "web-one" in panel.inner_text()
            assert keys[p1.name] in panel.inner_text()
            page.screenshot(path=str(shots / "dashboard.png"))
            wait_until(lambda: d_alias and d_prune, 30, what="the daemon-side timings")
            # the page follows the daemon within seconds (event stream), not at a reload
            assert t_prune - d_prune[0] < 10.0, (t_prune, d_prune)
            print(
                f"\nUI timings: put-alias -> page {t_alias:.2f} s (daemon's API "
                f"{d_alias[0]:.2f} s), join -> page {t_join:.2f} s, kill -9 -> row gone "
                f"{t_prune:.2f} s (pruned in the daemon's API {d_prune[0]:.2f} s; "
                f"heartbeatInterval {timings.heartbeat_interval:g} s)"
            )
    if shots == tmp_path:
        shutil.rmtree(tmp_path / "profile", ignore_errors=True)
