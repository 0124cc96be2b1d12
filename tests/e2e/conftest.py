"""End-to-end fixtures: the real server (``twistd -n rtmpd``) on loopback
ports, a generated clip, and real clients (ffmpeg, ffprobe, rtmpdump, and
Debian's headless Chromium driven by Playwright: :func:`browser_page`)."""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Page

TOOLS = ("ffmpeg", "ffprobe", "rtmpdump")
VENV_BIN = Path(sys.executable).parent
#: Generous bound for anything that waits on a real process; tests never
#: assert on speed, this only keeps a broken run from hanging.
WAIT_S = 30.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session", autouse=True)
def _tools() -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.fail(f"end-to-end tests need {', '.join(missing)}: `make test` installs them")


_handed_out: set[int] = set()


def free_ports(count: int) -> tuple[int, ...]:
    """``count`` distinct free loopback ports, none handed out before in this
    session (binding port 0 one socket at a time can give the same port
    twice: a server's web and HTTP listeners once collided that way)."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            s = socket.socket()
            held.append(s)
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
            if port not in _handed_out:
                _handed_out.add(port)
                ports.append(port)
    finally:
        for s in held:
            s.close()
    return tuple(ports)


def wait_for_port(port: int, deadline_s: float = WAIT_S) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


@pytest.fixture(scope="session")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6 s clip: H.264 with B-frames and a 1 s GOP (25 fps) + AAC, ~1 Mbit/s."""
    out = tmp_path_factory.mktemp("clip") / "clip.flv"
    subprocess.run(
        [
            "ffmpeg", "-v", "error", "-y",
            "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25",
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
            "-t", "6", "-c:v", "libx264", "-preset", "veryfast", "-bf", "2", "-g", "25",
            "-keyint_min", "25", "-sc_threshold", "0", "-b:v", "900k", "-pix_fmt", "yuv420p",
            "-c:a", "aac", "-b:a", "96k", "-f", "flv", str(out),
        ],
        check=True,
        timeout=120,
    )
    return out


@dataclass
class Server:
    """A running ``twistd -n rtmpd`` and where to reach it."""

    rtmp_port: int
    http_port: int
    web_port: int
    root: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def rtmp_url(self, name: str, app: str = "live") -> str:
        return f"rtmp://127.0.0.1:{self.rtmp_port}/{app}/{name}"

    def flv_url(self, name: str, app: str = "live") -> str:
        return f"http://127.0.0.1:{self.http_port}/{app}/{name}.flv"

    def web_url(self, path: str = "", host: str = "127.0.0.1") -> str:
        """A URL on the web port (pages, recordings): ``web_url("index.html?stream=x")``."""
        return f"http://{host}:{self.web_port}/{path.lstrip('/')}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def publish(self, clip: Path, name: str, *, loops: int = -1, app: str = "live",
                extra: list[str] | None = None) -> subprocess.Popen[bytes]:
        """ffmpeg publishing ``clip`` in real time over RTMP (looped)."""
        proc = subprocess.Popen(
            ["ffmpeg", "-v", "error", "-re", "-stream_loop", str(loops), "-i", str(clip),
             "-c", "copy", *(extra or []), "-f", "flv", self.rtmp_url(name, app)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        self.children.append(proc)
        return proc

    def wait_live(self, name: str, app: str = "live", deadline_s: float = WAIT_S) -> None:
        """Poll HEAD on the HTTP-FLV URL until the stream is live."""
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if self.is_live(name, app):
                return
            time.sleep(0.1)
        raise TimeoutError(f"stream {app}/{name} never went live; log:\n{self.log()[-3000:]}")

    def wait_log(self, pattern: re.Pattern[str], deadline_s: float = WAIT_S) -> re.Match[str]:
        """Poll the server's log until ``pattern`` matches a line; the match."""
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            found = pattern.search(self.log())
            if found:
                return found
            time.sleep(0.1)
        raise TimeoutError(f"{pattern.pattern!r} never matched the log:\n{self.log()[-3000:]}")

    def is_live(self, name: str, app: str = "live") -> bool:
        request = urllib.request.Request(self.flv_url(name, app), method="HEAD")
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")


def head_status(server: Server, name: str, app: str = "live") -> int:
    """The status a HEAD of the stream's HTTP-FLV URL gets (200 live, 404 not)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=WAIT_S)
    try:
        conn.request("HEAD", f"/{app}/{name}.flv")
        return conn.getresponse().status
    finally:
        conn.close()


def start_server(tmp: Path, *extra: str, ports: tuple[int, int, int] | None = None) -> Server:
    """``twistd -n rtmpd`` with its root and log under ``tmp``, on three free
    loopback ports or on ``ports`` (RTMP, HTTP, web: a restart on the same ports)."""
    rtmp_port, http_port, web_port = ports if ports is not None else free_ports(3)
    root = tmp / "media"
    log_path = tmp / "rtmpd.log"
    log_file = open(log_path, "wb")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(
        [
            str(VENV_BIN / "twistd"), "--nodaemon", "--pidfile=", "--logfile=-", "rtmpd",
            "--rtmp", f"tcp:{rtmp_port}:interface=127.0.0.1",
            "--http", f"tcp:{http_port}:interface=127.0.0.1",
            "--web", f"tcp:{web_port}:interface=127.0.0.1",
            "--root", str(root), *extra,
        ],
        stdout=log_file, stderr=subprocess.STDOUT, cwd=tmp,
    )
    log_file.close()
    server = Server(rtmp_port, http_port, web_port, root, log_path, process)
    try:
        for port in (rtmp_port, http_port, web_port):
            wait_for_port(port)
    except TimeoutError:
        process.kill()
        raise RuntimeError("rtmpd did not start:\n" + server.log()) from None
    return server


def stop_server(server: Server) -> None:
    for child in server.children:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=WAIT_S)
        if child.stderr is not None:
            child.stderr.close()
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(timeout=WAIT_S)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
        raise AssertionError("rtmpd did not stop on SIGTERM") from None
    log = server.log()
    assert "Traceback" not in log, f"the server logged a traceback:\n{log[-5000:]}"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """A fresh server with all defaults but loopback ports."""
    srv = start_server(tmp_path)
    yield srv
    stop_server(srv)


def run(cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a client to completion, capturing its output as text."""
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        env={**os.environ, "AV_LOG_FORCE_NOCOLOR": "1"},
    )


# --------------------------------------------------------------------------- a browser

CHROMIUM = Path("/usr/bin/chromium")
#: Flags for a throwaway headless Chromium: fake camera and microphone with
#: permission granted, media that plays without a gesture, no sandbox (the
#: tests run as root), nothing fetched from the network by the browser.
CHROMIUM_FLAGS = (
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required", "--no-sandbox", "--disable-gpu",
    "--disable-background-networking", "--disable-component-update", "--no-first-run",
)
#: Where screenshots go for people to look at: $RTMPD_TEST_ARTIFACTS, else
#: tests/artifacts/ (gitignored).
ARTIFACTS = Path(os.environ.get("RTMPD_TEST_ARTIFACTS")
                 or Path(__file__).resolve().parent.parent / "artifacts")


@pytest.fixture(scope="session")
def chromium() -> Iterator[Browser]:
    """Debian's Chromium, headless, launched once per session through
    Playwright (never a browser Playwright downloads). Skips, with the
    reason, only when Chromium is not installed or cannot start."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (`make test` installs it)")
    from playwright.sync_api import Error, sync_playwright

    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=list(CHROMIUM_FLAGS), headless=True,
            )
        except Error as e:
            pytest.skip(f"{CHROMIUM} does not start: {e}")
        yield browser
        browser.close()


@dataclass
class BrowserPage:
    """A fresh page (own context: no cookies or cache shared between tests)
    that records what a test should not see: console messages at error
    level and uncaught exceptions."""

    page: Page
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)

    def _console(self, message: ConsoleMessage) -> None:
        line = f"{message.type}: {message.text}"
        self.console.append(line)
        if message.type == "error":
            self.console_errors.append(line)

    def screenshot(self, name: str) -> Path:
        """Save a PNG of the page under :data:`ARTIFACTS` and return its path."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def assert_clean(self) -> None:
        """No uncaught exception and nothing at error level in the console."""
        assert self.page_errors == [], self.page_errors
        assert self.console_errors == [], self.console_errors

    def report(self) -> str:
        """The console so far, for assertion messages."""
        return "\n".join(self.console[-40:] + self.page_errors)


@pytest.fixture
def browser_page(chromium: Browser) -> Iterator[BrowserPage]:
    """A new page in headless Chromium (see :class:`BrowserPage`); open a
    URL with ``browser_page.page.goto(server.web_url("index.html?stream=x"))``."""
    context = chromium.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(WAIT_S * 1000)
    watched = BrowserPage(page)
    page.on("console", watched._console)
    page.on("pageerror", lambda error: watched.page_errors.append(f"uncaught: {error}"))
    try:
        yield watched
    finally:
        context.close()
