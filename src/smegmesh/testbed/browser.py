"""A headless Chromium page for the dashboard tests (Debian's ``chromium`` driven by Playwright).

No downloaded browser: Playwright (a dev dependency, imported only when a page
is opened) drives the system's ``/usr/bin/chromium`` with a fresh profile.
Used by ``tests/proc/test_ui_browser.py`` and ``tests/netns/test_ui_browser_netns.py``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Page

__all__ = ["CHROMIUM", "CHROMIUM_FLAGS", "chromium_missing", "chromium_page"]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_missing() -> str | None:
    """Why no page can be opened here (None: it can): Playwright or Chromium missing."""
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (uv sync --dev)"
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} missing (Debian package chromium; scripts/bootstrap.sh)"
    return None


@contextlib.contextmanager
def chromium_page(
    profile: Path, *, executable: str = CHROMIUM, timeout_ms: int = 30_000
) -> Iterator[Page]:
    """A page of a headless Chromium with a fresh profile in ``profile``, closed on exit.

    ``executable``: what to start instead of :data:`CHROMIUM` (a wrapper that
    runs it in a network namespace); ``timeout_ms``: the page's default wait.
    """
    import playwright.sync_api as playwright

    with playwright.sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(profile),  # a fresh --user-data-dir
            executable_path=executable,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 860},
        )
        try:
            page = ctx.pages[0] if ctx.pages else ctx.new_page()
            page.set_default_timeout(timeout_ms)
            yield page
        finally:
            ctx.close()
