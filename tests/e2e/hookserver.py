"""An HTTP hook server for end-to-end tests: it answers rtmpd's on-publish /
on-play / done hooks by path and records every request it got.

* ``/allow`` answers 200, ``/deny`` 403, ``/error`` 500;
* ``/hang`` answers only after :attr:`HookServer.hang_s` (past rtmpd's
  ``--hook-timeout`` in the tests that use it);
* ``/done`` answers 204 (for the done hooks);
* ``/forward`` answers 200 with ``{"forward": HookServer.forward_urls}`` (an
  on-publish hook adding forwards).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class HookServer:
    """A running hook server on a free loopback port."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.hang_s = 8.0
        self.forward_urls: list[str] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {"unparsed": raw.decode("latin-1")}
                with owner._changed:
                    owner.calls.append((self.path, body))
                    owner._changed.notify_all()
                path = self.path.split("?")[0]
                if path == "/hang":
                    time.sleep(owner.hang_s)
                if path == "/forward":
                    answer = json.dumps({"forward": owner.forward_urls}).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                    return
                code = {"/allow": 200, "/deny": 403, "/error": 500, "/done": 204}.get(path, 404)
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def calls_to(self, path: str) -> list[dict[str, Any]]:
        with self._lock:
            return [body for p, body in self.calls if p.split("?")[0] == path]

    def wait_for(self, path: str, count: int = 1, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        """Wait until ``path`` got at least ``count`` calls; returns them."""
        end = time.monotonic() + timeout_s
        with self._changed:
            while True:
                got = [body for p, body in self.calls if p.split("?")[0] == path]
                if len(got) >= count:
                    return got
                left = end - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{path} got {len(got)} calls, expected {count}")
                self._changed.wait(left)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@contextmanager
def hook_server() -> Iterator[HookServer]:
    server = HookServer()
    try:
        yield server
    finally:
        server.close()
