"""Headless Chromium for end-to-end tests, driven over the DevTools protocol.

:func:`launch` starts ``/usr/bin/chromium`` (Debian's ``chromium`` package)
with a fresh profile and an ephemeral debugging port, and returns a
:class:`Browser`; :meth:`Browser.open` opens a page and returns a
:class:`Page`, whose :meth:`Page.evaluate` runs JavaScript (awaiting a
promise) and :meth:`Page.wait_for` polls an expression until it is truthy.
Console messages and uncaught exceptions of a page are kept in
:attr:`Page.console` for failure messages.

:func:`browser_or_skip` gives a Browser or skips the test with the reason
Chromium could not run (not installed, or it died at start with this
stderr); tests never skip for anything else.

Usage::

    with browser_or_skip() as browser:
        page = browser.open("http://127.0.0.1:8082/player.html")
        page.wait_for("document.readyState === 'complete'")
        assert page.evaluate("1 + 1") == 2
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

CHROMIUM = "/usr/bin/chromium"
#: Flags for a quiet, headless, throwaway browser (as root it needs
#: --no-sandbox); media may play without a user gesture.
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--autoplay-policy=no-user-gesture-required", "--mute-audio",
    "--remote-debugging-port=0",
)
#: Generous bounds: they only keep a broken run from hanging.
START_S = 30.0
COMMAND_S = 30.0


class BrowserUnavailable(RuntimeError):
    """Chromium is not installed here or does not start."""


class DevToolsError(RuntimeError):
    """A DevTools command failed, or a page's script threw."""


class Browser:
    """A running Chromium and one DevTools connection to it."""

    def __init__(self, process: subprocess.Popen[bytes], home: Path, ws: ClientConnection):
        self.process = process
        #: The profile (``profile/``) and Chromium's stderr (``stderr.log``).
        self.home = home
        self.ws = ws
        self._ids = itertools.count(1)
        self._events: list[dict[str, Any]] = []
        self.pages: list[Page] = []

    def send(self, method: str, params: dict[str, Any] | None = None, *,
             session: str | None = None, timeout_s: float = COMMAND_S) -> dict[str, Any]:
        """Send one command and return its result (events that arrive
        meanwhile are handed to their pages)."""
        message_id = next(self._ids)
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DevToolsError(f"{method}: no answer within {timeout_s:g} s")
            reply = json.loads(self.ws.recv(timeout=left))
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise DevToolsError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result
            self._dispatch(reply)

    def _dispatch(self, event: dict[str, Any]) -> None:
        session = event.get("sessionId")
        for page in self.pages:
            if page.session == session:
                page.event(event)

    def open(self, url: str) -> Page:
        """A new tab at ``url`` (loading starts; wait for what you need)."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send(
            "Target.attachToTarget", {"targetId": target, "flatten": True}
        )["sessionId"]
        page = Page(self, target, session)
        self.pages.append(page)
        page.send("Runtime.enable")
        page.send("Page.enable")
        page.send("Page.navigate", {"url": url})
        return page

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.send("Browser.close", timeout_s=5)
        with contextlib.suppress(Exception):
            self.ws.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        shutil.rmtree(self.home, ignore_errors=True)


class Page:
    """One tab, attached with its own DevTools session."""

    def __init__(self, browser: Browser, target: str, session: str) -> None:
        self.browser = browser
        self.target = target
        self.session = session
        #: ``"level: text"`` of each console message and uncaught exception.
        self.console: list[str] = []

    def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.browser.send(method, params, session=self.session)

    def event(self, event: dict[str, Any]) -> None:
        method = event.get("method")
        params = event.get("params", {})
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
            self.console.append(f"{params.get('type')}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            shown = details.get("exception", {}).get("description") or details.get("text")
            self.console.append(f"exception: {shown}")

    def evaluate(self, expression: str, *, timeout_s: float = COMMAND_S) -> Any:
        """The value of a JavaScript expression (a promise is awaited); a
        throw raises DevToolsError with its message."""
        result = self.browser.send(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True,
             "timeout": int(timeout_s * 1000)},
            session=self.session, timeout_s=timeout_s + 5,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            shown = details.get("exception", {}).get("description") or details.get("text")
            raise DevToolsError(f"{expression[:80]!r} threw: {shown}")
        return result["result"].get("value")

    def wait_for(self, expression: str, *, timeout_s: float = COMMAND_S) -> Any:
        """Poll ``expression`` until it is truthy; return its value."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{expression!r} still {value!r} after {timeout_s:g} s; "
                    f"console: {self.console[-20:]}"
                )
            time.sleep(0.1)


def _devtools_port(profile: Path, process: subprocess.Popen[bytes], log: Path) -> tuple[int, str]:
    """Port and browser path Chromium wrote to DevToolsActivePort."""
    marker = profile / "DevToolsActivePort"
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            lines = marker.read_text().split()
            return int(lines[0]), lines[1]
        time.sleep(0.05)
    if process.poll() is None:
        process.kill()
    process.wait()
    raise BrowserUnavailable(
        f"{CHROMIUM} did not start (exit {process.returncode}): "
        f"{log.read_text(errors='replace')[-1500:]}"
    )


def launch(*extra_flags: str) -> Browser:
    """Start headless Chromium; BrowserUnavailable if it cannot run."""
    if not os.access(CHROMIUM, os.X_OK):
        raise BrowserUnavailable(f"{CHROMIUM} is not installed (apt-get install chromium)")
    home = Path(tempfile.mkdtemp(prefix="rtmpd-chromium-"))
    profile = home / "profile"
    log = home / "stderr.log"
    with open(log, "wb") as stderr:
        process = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *extra_flags, "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
        )
    try:
        port, path = _devtools_port(profile, process, log)
        ws = connect(f"ws://127.0.0.1:{port}{path}", max_size=None, open_timeout=START_S)
    except BaseException:
        if process.poll() is None:
            process.kill()
            process.wait()
        shutil.rmtree(home, ignore_errors=True)
        raise
    return Browser(process, home, ws)


@contextlib.contextmanager
def browser_or_skip(*extra_flags: str) -> Iterator[Browser]:
    """A Browser for the ``with`` block, or a skip saying why Chromium
    cannot run here."""
    try:
        browser = launch(*extra_flags)
    except BrowserUnavailable as e:
        pytest.skip(f"headless Chromium cannot run: {e}")
    try:
        yield browser
    finally:
        browser.close()
